//! Reconnect back-off: exponential with jitter (from `backon`), so that
//! several workers and relays cut off by one broker restart do not all come
//! back on the same schedule.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays that double from `min` up to `max`, each stretched by a random
/// part of itself (so between the nominal delay and twice it). `reset` after
/// a success starts again from `min`.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Backoff {
    #[must_use]
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max.max(min))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
        }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        self.delays
            .next()
            .unwrap_or_else(|| self.builder.build().next().unwrap_or_default())
    }

    /// Starts again from the shortest delay.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(800));
        let mut b = Backoff::new(min, max);
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (d, nominal) in delays.iter().zip([100, 200, 400, 800, 800, 800]) {
            let nominal = Duration::from_millis(nominal);
            assert!(*d >= nominal && *d <= nominal * 2, "{d:?} vs {nominal:?}");
        }
        b.reset();
        assert!(b.next_delay() <= min * 2);
        // Two back-offs do not march in step.
        let mut a = Backoff::new(min, max);
        let mut c = Backoff::new(min, max);
        let same = (0..8).filter(|_| a.next_delay() == c.next_delay()).count();
        assert!(same < 8, "jitter makes schedules differ");
    }
}
