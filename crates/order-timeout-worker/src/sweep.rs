//! The sweep: the safety net for lost messages and a stuck outbox. Every
//! `--worker-sweep-interval` one worker (an advisory lock) pages through the
//! pending orders whose deadline passed more than `--worker-sweep-grace` ago, and
//! through the closed orders whose recheck is that overdue, and settles each
//! through the same [`Settler::settle`] as messages.
//!
//! A pass always makes progress: it pages by keyset `(deadline, id)` to the
//! end, however many of the oldest stay unsettled, and an order it cannot
//! settle gets a `next_check_at` one step further up the retry ladder, so it
//! is asked about at most once per step. Orders with an anomaly are left to
//! a human (ARCHITECTURE.md, invariant 14).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::RetryLadder;
use chrono::Utc;
use domain::{OverdueOrder, PgConnection, StoreError, SweepLock};
use service::Outcome;

use crate::settle::{Settlement, Settler, Trigger};
use crate::supervisor::ConsumerSettings;

/// What one sweep pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Orders looked at (pending ones and rechecks).
    pub looked_at: usize,
    /// Of those, settled for good (or found settled).
    pub settled: usize,
    /// Of those, given a later `next_check_at`.
    pub deferred: usize,
}

/// The sweep: its settings, the retry ladder its deferrals climb, and the
/// settler it shares with the lanes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sweeper {
    settler: Arc<Settler>,
    ladder: RetryLadder,
    interval: Duration,
    grace: Duration,
    batch: i64,
}

impl Sweeper {
    /// A sweep every `settings.sweep_interval` of what is
    /// `settings.sweep_grace` overdue, `settings.sweep_batch` per page;
    /// what it cannot settle waits one `ladder` step longer each time.
    #[must_use]
    pub fn new(settler: Arc<Settler>, ladder: RetryLadder, settings: &ConsumerSettings) -> Self {
        Self {
            settler,
            ladder,
            interval: settings.sweep_interval,
            grace: settings.sweep_grace,
            batch: settings.sweep_batch,
        }
    }

    /// One sweep pass. Only one worker sweeps at a time (an advisory lock);
    /// returns `None` when another holds it.
    pub fn sweep_once(&self) -> Result<Option<SweepReport>, StoreError> {
        self.sweep_until(&AtomicBool::new(false))
    }

    /// [`Sweeper::sweep_once`], stopping between orders once `stop` is raised
    /// (so SIGTERM is not held up by a long sweep).
    pub fn sweep_until(&self, stop: &AtomicBool) -> Result<Option<SweepReport>, StoreError> {
        let mut conn = domain::checkout(self.settler.pool())?;
        let Some(mut lock) = SweepLock::try_acquire(&mut conn)? else {
            return Ok(None);
        };
        // The lock is released when `lock` drops, whatever the pass returns.
        self.sweep_pass(lock.conn(), stop).map(Some)
    }

    fn sweep_pass(
        &self,
        conn: &mut PgConnection,
        stop: &AtomicBool,
    ) -> Result<SweepReport, StoreError> {
        let grace = chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::MAX);
        let before = Utc::now() - grace;
        let batch = self.batch;
        let mut report = SweepReport::default();
        let mut cursor = None;
        loop {
            let page = domain::pending_past_deadline(conn, before, Utc::now(), cursor, batch)?;
            for order in &page {
                if stop.load(Ordering::Relaxed) {
                    return Ok(report);
                }
                self.sweep_one(conn, order, Trigger::Sweep, &mut report)?;
            }
            match page.last() {
                Some(last) if page.len() as i64 >= batch => cursor = Some(last.cursor()),
                _ => break,
            }
        }
        let mut after_id = 0;
        loop {
            let page = domain::rechecks_due(conn, before, Utc::now(), after_id, batch)?;
            for order in &page {
                if stop.load(Ordering::Relaxed) {
                    return Ok(report);
                }
                self.sweep_one(conn, order, Trigger::Recheck, &mut report)?;
            }
            match page.last() {
                Some(last) if page.len() as i64 >= batch => after_id = last.id,
                _ => break,
            }
        }
        Ok(report)
    }

    fn sweep_one(
        &self,
        conn: &mut PgConnection,
        order: &OverdueOrder,
        trigger: Trigger,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let s = self.settler.settle(&order.order_no, trigger, Utc::now());
        // The sweep parks nothing: what it cannot settle it asks again later.
        let outcome = match s.outcome() {
            Outcome::Parked => Outcome::Retry,
            o => o,
        };
        self.settler.metrics().settlement(outcome, trigger);
        s.log(
            &order.order_no,
            outcome,
            order.check_failures + 1,
            started.elapsed(),
        );
        report.looked_at += 1;
        let not_before = match &s {
            Settlement::Closed { .. }
            | Settlement::Compensated { .. }
            | Settlement::PaidAfterClose { .. }
            | Settlement::Rechecked { .. }
            | Settlement::AlreadySettled(_) => {
                report.settled += 1;
                return Ok(());
            }
            // Needs a human: recorded on the order, the sweep leaves it now.
            // Not due, unknown: cannot happen for what the sweep selects.
            Settlement::NeedsHuman { .. }
            | Settlement::NotYetDue { .. }
            | Settlement::UnknownOrder => return Ok(()),
            Settlement::RetryLater { not_before, .. } => *not_before,
            Settlement::GiveUp { reason } => {
                log::error!(
                    order_no:% = order.order_no,
                    outcome:% = outcome;
                    "sweep cannot settle order {}: {reason}; a human must look (asked again at most every {:?})",
                    order.order_no,
                    self.ladder.longest()
                );
                // A permanent error: straight to the top of the ladder.
                Some(self.ladder.longest())
            }
        };
        let step = self
            .ladder
            .step(order.check_failures as usize)
            .max(not_before.unwrap_or(Duration::ZERO));
        let next = Utc::now() + chrono::Duration::from_std(step).unwrap_or(chrono::Duration::MAX);
        if domain::defer_check(conn, &order.order_no, next)? {
            report.deferred += 1;
        }
        Ok(())
    }

    /// Every `sweep_interval`, one pass, until `stop` is raised.
    pub fn run(&self, stop: &AtomicBool) {
        loop {
            service::sleep_unless_stopped(self.interval, stop);
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match self.sweep_until(stop) {
                Ok(Some(r)) if r.looked_at > 0 => log::info!(
                    "sweep looked at {} overdue order(s): {} settled, {} deferred",
                    r.looked_at,
                    r.settled,
                    r.deferred
                ),
                Ok(_) => {}
                Err(e) => log::warn!("sweep failed (will try again): {e}"),
            }
        }
    }
}
