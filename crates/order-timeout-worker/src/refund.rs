//! The worker's refund loop: every `--worker-refund-interval`, one pass of
//! [`service::refund`] over the refunds that are due.

use std::sync::atomic::{AtomicBool, Ordering};

pub use service::refund::{RefundReport, RefundStep, REFUND_LEASE};

use crate::consumer::Worker;
use crate::dispose::ladder;

impl Worker {
    /// Every `refund_interval`, one pass over the refunds that are due.
    pub(crate) fn refund_loop(&self, stop: &AtomicBool) {
        let ladder = ladder(&self.topology);
        loop {
            service::sleep_unless_stopped(self.settings.refund_interval, stop);
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match self.settler.refund_due(&ladder) {
                Ok(r) if r.claimed > 0 => log::info!(
                    "refunds: {} looked at, {} finished, {} processing at WeChat Pay, {} to retry, {} need a human",
                    r.claimed,
                    r.succeeded,
                    r.still_processing,
                    r.retried,
                    r.parked
                ),
                Ok(_) => {}
                Err(e) => log::warn!("refund pass failed (will try again): {e}"),
            }
        }
    }
}
