//! Counters for the periodic summary line. Its words are the metrics'
//! names: `retries` are what `order_timeout_retries_total` counts (an
//! attempt whose payment state was unknown, sent to a retry queue to be
//! tried again); `not_yet_due` are the messages that came before their
//! deadline and were sent to a retry queue to wait out the rest, which
//! `order_timeout_settlements_total{outcome="not_yet_due"}` counts and
//! which are no retry (they use no attempt).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Outcome counts: since the last summary (for the summary line) and since
/// the start (for whoever watches the worker: tests, later metrics).
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Window>,
    totals: Mutex<BTreeMap<&'static str, u64>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    outcomes: BTreeMap<&'static str, u64>,
    retries: u64,
    not_yet_due: u64,
    parked: u64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            outcomes: BTreeMap::new(),
            retries: 0,
            not_yet_due: 0,
            parked: 0,
        }
    }
}

impl Stats {
    pub fn outcome(&self, label: &'static str) {
        *self.lock().outcomes.entry(label).or_default() += 1;
        *self
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(label)
            .or_default() += 1;
    }

    /// Settlement attempts with this outcome label since the start.
    #[must_use]
    pub fn total(&self, label: &str) -> u64 {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(label)
            .copied()
            .unwrap_or(0)
    }

    /// An attempt whose payment state was unknown, sent to a retry queue
    /// (one `order_timeout_retries_total`).
    pub fn retry(&self) {
        self.lock().retries += 1;
    }

    /// A message that came before its deadline, sent to a retry queue to
    /// wait out the rest: no retry.
    pub fn not_yet_due(&self) {
        self.lock().not_yet_due += 1;
    }

    pub fn parked(&self) {
        self.lock().parked += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The summary of the window since the last call, and a new window.
    /// `None` when nothing happened.
    pub fn take_summary(&self) -> Option<String> {
        let w = std::mem::take(&mut *self.lock());
        let total: u64 = w.outcomes.values().sum();
        if total == 0 && w.retries == 0 && w.not_yet_due == 0 && w.parked == 0 {
            return None;
        }
        let secs = w
            .started
            .elapsed()
            .max(Duration::from_millis(1))
            .as_secs_f64();
        let by: Vec<String> = w.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        Some(format!(
            "last {secs:.0} s: {total} settlement attempts ({:.1}/s): {}; sent to a retry queue: \
             {} retries (order_timeout_retries_total), {} not yet due (waiting out the rest, \
             no attempt used); {} parked",
            total as f64 / secs,
            by.join(", "),
            w.retries,
            w.not_yet_due,
            w.parked
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_and_waits_for_the_deadline_are_counted_apart() {
        let s = Stats::default();
        s.outcome("retry_later");
        s.retry();
        s.outcome("not_yet_due");
        s.not_yet_due();
        s.outcome("not_yet_due");
        s.not_yet_due();
        let line = s.take_summary().unwrap();
        assert!(
            line.contains("1 retries (order_timeout_retries_total), 2 not yet due"),
            "{line}"
        );
        assert!(s.take_summary().is_none());
    }
}
