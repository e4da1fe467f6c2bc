//! The periodic summary line. It reads the counters of the metrics handle,
//! the same the Prometheus endpoint exports (one counting system), so its
//! words are the metrics' names: `retries` are what
//! `order_timeout_retries_total` counts (an attempt whose payment state was
//! unknown, sent to a retry queue to be tried again); `not yet due` are the
//! attempts `order_timeout_settlements_total{outcome="not_yet_due"}` counts
//! (a message that came before its deadline, waiting out the rest: no
//! retry, no attempt used); `parked` is `order_timeout_parked_total`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker::RetryLadder;
use service::{Metrics, Outcome, Trigger};

use crate::dispose::reason;
use crate::settle::Settler;

/// The counts the summary line is made of, as read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    /// Per outcome, in the order of [`Outcome::ALL`]; every trigger summed.
    outcomes: [u64; Outcome::ALL.len()],
    retries: u64,
    parked: u64,
}

impl Tally {
    fn minus(&self, before: &Tally) -> Tally {
        Tally {
            outcomes: std::array::from_fn(|i| self.outcomes[i].saturating_sub(before.outcomes[i])),
            retries: self.retries.saturating_sub(before.retries),
            parked: self.parked.saturating_sub(before.parked),
        }
    }

    fn read(m: &Metrics, ladder: &RetryLadder) -> Tally {
        Tally {
            outcomes: Outcome::ALL.map(|o| Trigger::ALL.iter().map(|t| m.settlements(o, *t)).sum()),
            retries: ladder.steps().iter().map(|d| m.retries(*d)).sum(),
            parked: reason::PARKED
                .iter()
                .copied()
                .chain(domain::Anomaly::ALL.map(domain::Anomaly::as_str))
                .map(|r| m.parked_for(r))
                .sum(),
        }
    }

    /// The line of a window of `secs` seconds with these counts; `None`
    /// when nothing happened.
    fn line(&self, secs: f64, (statements, closes): (u64, u64)) -> Option<String> {
        let total: u64 = self.outcomes.iter().sum();
        if total == 0 && self.retries == 0 && self.parked == 0 {
            return None;
        }
        let by: Vec<String> = Outcome::ALL
            .iter()
            .filter(|o| self.of(**o) > 0)
            .map(|o| format!("{o} {}", self.of(*o)))
            .collect();
        Some(format!(
            "last {secs:.0} s: {total} settlement attempts ({:.1}/s): {}; sent to a retry queue: \
             {} retries (order_timeout_retries_total), {} not yet due (waiting out the rest, \
             no attempt used); {} parked; {closes} local closes so far, in {statements} statements",
            total as f64 / secs,
            by.join(", "),
            self.retries,
            self.of(Outcome::NotYetDue),
            self.parked
        ))
    }

    fn of(&self, outcome: Outcome) -> u64 {
        Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.outcomes[i])
    }
}

/// The summary of one worker: the window since the last line.
#[derive(Debug)]
pub struct Summary {
    settler: Arc<Settler>,
    ladder: RetryLadder,
    window: Mutex<(Instant, Tally)>,
}

impl Summary {
    /// A summary of what `settler`'s metrics count, with the retries of
    /// `ladder`'s steps. The settler's metrics must be enabled (the worker
    /// makes sure of it), or every line would say nothing happened.
    #[must_use]
    pub fn new(settler: Arc<Settler>, ladder: RetryLadder) -> Self {
        Self {
            settler,
            ladder,
            window: Mutex::new((Instant::now(), Tally::default())),
        }
    }

    fn read(&self) -> Tally {
        Tally::read(self.settler.metrics(), &self.ladder)
    }

    /// Settlement attempts with this outcome since the worker started.
    #[must_use]
    pub fn total(&self, outcome: Outcome) -> u64 {
        self.read().of(outcome)
    }

    /// The line for the window since the last call, and a new window.
    /// `None` when nothing happened.
    #[must_use]
    pub fn take(&self) -> Option<String> {
        let now = self.read();
        let (started, w) = {
            let mut window = self
                .window
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (started, before) = std::mem::replace(&mut *window, (Instant::now(), now));
            (started, now.minus(&before))
        };
        let secs = started
            .elapsed()
            .max(Duration::from_millis(1))
            .as_secs_f64();
        w.line(secs, self.settler.close_batches())
    }

    /// Every `interval` the line of the window, until `stop` is raised; then
    /// the last one.
    pub fn run(&self, interval: Duration, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            service::sleep_unless_stopped(interval, stop);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            self.log();
        }
    }

    /// Logs the line of the window, if anything happened.
    pub fn log(&self) {
        if let Some(line) = self.take() {
            log::info!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_and_waits_for_the_deadline_are_counted_apart() {
        let m = Metrics::new("worker");
        let ladder = RetryLadder::new(&[Duration::from_secs(5)]).unwrap();
        let start = Tally::read(&m, &ladder);
        assert!(start.line(1.0, (0, 0)).is_none());
        m.settlement(Outcome::Retry, Trigger::Message);
        m.retry(Duration::from_secs(5));
        m.settlement(Outcome::NotYetDue, Trigger::Message);
        m.settlement(Outcome::NotYetDue, Trigger::Recheck);
        m.settlement(Outcome::Parked, Trigger::Message);
        m.parked(reason::POISON);
        m.settlement(Outcome::Closed, Trigger::Sweep);
        let now = Tally::read(&m, &ladder);
        let line = now.minus(&start).line(2.0, (1, 3)).unwrap();
        assert!(
            line.starts_with("last 2 s: 5 settlement attempts (2.5/s): closed 1, not_yet_due 2, retry 1, parked 1;"),
            "{line}"
        );
        assert!(
            line.contains("1 retries (order_timeout_retries_total), 2 not yet due"),
            "{line}"
        );
        assert!(
            line.contains("; 1 parked; 3 local closes so far, in 1 statements"),
            "{line}"
        );
        // The next window starts where this one ended.
        assert!(now.minus(&now).line(1.0, (1, 3)).is_none());
    }
}
