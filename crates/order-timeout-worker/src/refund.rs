//! The worker's refund loop: every `--worker-refund-interval`, one pass of
//! the [`Refunder`] (`service::refund`) over the refunds that are due.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use service::refund::{RefundReport, RefundStep, Refunder, REFUND_LEASE};

/// Every `interval`, one pass over the refunds that are due, until `stop`
/// is raised.
pub fn run(refunder: &Refunder, interval: Duration, stop: &AtomicBool) {
    loop {
        service::sleep_unless_stopped(interval, stop);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match refunder.refund_due() {
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
