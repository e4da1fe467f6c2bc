//! What becomes of a message after one settlement attempt: a pure function
//! of the [`Settlement`], the attempts so far and the topology's retry
//! ladder. The lane only carries it out.

use std::time::Duration;

use broker::Topology;

use crate::settle::Settlement;

/// The `x-ot-reason` codes of retried and parked copies (anomalies add
/// their own, e.g. `amount_mismatch`). A fixed, small set: logs, `parked`
/// and counters can group by it.
pub mod reason {
    /// Looked at; the payment state is unknown; looking again later.
    pub const RETRY: &str = "retry";
    /// Came before the order's deadline (or its recheck): waiting out the rest.
    pub const NOT_YET_DUE: &str = "not_yet_due";
    /// Not a timeout message at all.
    pub const POISON: &str = "poison";
    /// No such order in the database.
    pub const UNKNOWN_ORDER: &str = "unknown_order";
    /// WeChat Pay refused in a way retrying will not fix.
    pub const PERMANENT_ERROR: &str = "permanent_error";
    /// `--worker-max-attempts` used up.
    pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
    /// A retry was wanted but no retry queue is configured.
    pub const NO_RETRY_QUEUE: &str = "no_retry_queue";

    /// The reasons a message is parked for, besides an anomaly's name.
    pub const PARKED: [&str; 5] = [
        POISON,
        UNKNOWN_ORDER,
        PERMANENT_ERROR,
        RETRIES_EXHAUSTED,
        NO_RETRY_QUEUE,
    ];
}

/// What to do with a delivery once it has been looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The order is settled (or needs nothing): ack.
    Ack,
    /// Settled by a close on `ORDER_NOT_EXIST`: publish its recheck (a copy
    /// marked `x-ot-recheck`) to the retry queue for `delay`, then ack.
    AckAndRecheck { delay: Duration },
    /// Look again after `delay`: publish a copy to a retry queue, then ack.
    Redelay {
        delay: Duration,
        attempt: u32,
        reason: &'static str,
        detail: String,
    },
    /// Give up: publish a copy to the parking queue with the reason, then ack.
    Park {
        attempt: u32,
        reason: &'static str,
        detail: String,
    },
}

/// What to do with a message that had `attempt` earlier attempts (0 for
/// the first) and whose settlement attempt gave `settlement`: ack when the
/// order is settled (with its recheck when the close rests on
/// `ORDER_NOT_EXIST`); park when it cannot be (unknown order, permanent
/// error, an anomaly for a human) or after `max_attempts`; otherwise delay
/// it on the retry ladder of `topology`. A message that came before its
/// deadline is delayed for the rest without counting an attempt.
#[must_use]
pub fn dispose(
    settlement: Settlement,
    attempt: u32,
    max_attempts: u32,
    topology: &Topology,
) -> Disposition {
    match settlement {
        Settlement::Closed {
            recheck_after: Some(delay),
            ..
        } => Disposition::AckAndRecheck { delay },
        Settlement::Closed {
            recheck_after: None,
            ..
        }
        | Settlement::Compensated { .. }
        | Settlement::PaidAfterClose { .. }
        | Settlement::Rechecked { .. }
        | Settlement::AlreadySettled(_) => Disposition::Ack,
        Settlement::UnknownOrder => Disposition::Park {
            attempt,
            reason: reason::UNKNOWN_ORDER,
            detail: "unknown order: no such order in the database".into(),
        },
        Settlement::NeedsHuman { anomaly, detail } => Disposition::Park {
            attempt: attempt + 1,
            reason: anomaly.as_str(),
            detail,
        },
        Settlement::GiveUp { reason } => Disposition::Park {
            attempt: attempt + 1,
            reason: reason::PERMANENT_ERROR,
            detail: reason,
        },
        Settlement::NotYetDue { remaining } => Disposition::Redelay {
            delay: remaining,
            attempt,
            reason: reason::NOT_YET_DUE,
            detail: "not due yet: waiting out the rest".into(),
        },
        Settlement::RetryLater {
            reason,
            not_before,
            user_paying,
        } => {
            let next = attempt + 1;
            if next >= max_attempts {
                Disposition::Park {
                    attempt: next,
                    reason: reason::RETRIES_EXHAUSTED,
                    detail: format!("gave up after {next} attempts; last: {reason}"),
                }
            } else {
                Disposition::Redelay {
                    delay: backoff(topology, next, not_before, user_paying),
                    attempt: next,
                    reason: reason::RETRY,
                    detail: reason,
                }
            }
        }
    }
}

/// The longest a lane waits, in place, for a deadline that is that close.
pub const IN_LANE_WAIT_MAX: Duration = Duration::from_secs(1);

/// The not-yet-due rule, for a message that came `remaining` before its
/// deadline (or its recheck): it waits out the rest in the retry queue with
/// the longest delay <= `remaining` (no attempt used; see [`dispose`] and
/// `Topology::retry_route`); this returns `Some(remaining)`, meaning "wait
/// here, then settle", when no retry delay is that short and `remaining` is
/// at most [`IN_LANE_WAIT_MAX`].
///
/// Why in the lane: the next retry queue would bring the message back a
/// whole retry delay later (up to 5 s past the deadline with the default
/// ladder, when the message came 10 ms early); holding the lane for at most
/// a second costs less than that, and settling before the deadline is never
/// an option (the buyer may still pay). A longer remainder shorter than
/// every retry delay still goes to the shortest retry queue: it overshoots
/// by less than that delay minus one second, and holding a lane longer would
/// stall every message behind it.
#[must_use]
pub fn wait_in_lane(settlement: &Settlement, topology: &Topology) -> Option<Duration> {
    let Settlement::NotYetDue { remaining } = settlement else {
        return None;
    };
    let shortest = topology.retry_queues().first().map(|q| q.ttl);
    let no_queue_fits = shortest.is_none_or(|d| *remaining < d);
    (no_queue_fits && *remaining <= IN_LANE_WAIT_MAX).then_some(*remaining)
}

/// The retry ladder: also the sweep's and the refunds' back-off.
#[must_use]
pub fn ladder(topology: &Topology) -> broker::RetryLadder {
    topology.retry_ladder()
}

/// The retry delay after `attempts` failed attempts: the ladder's step (the
/// shortest while the buyer is paying), at least `not_before`.
#[must_use]
pub fn backoff(
    topology: &Topology,
    attempts: u32,
    not_before: Option<Duration>,
    user_paying: bool,
) -> Duration {
    let step = if user_paying {
        0
    } else {
        (attempts as usize).saturating_sub(1)
    };
    ladder(topology)
        .step(step)
        .max(not_before.unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use broker::QueueType;
    use domain::{Anomaly, OrderStatus};

    use super::*;

    fn topology() -> Topology {
        Topology::single(Duration::from_mins(1), QueueType::Classic).unwrap()
    }

    fn retry(reason: &str) -> Settlement {
        Settlement::RetryLater {
            reason: reason.into(),
            not_before: None,
            user_paying: false,
        }
    }

    #[test]
    fn settled_orders_are_acked_and_a_close_on_order_not_exist_is_rechecked() {
        let t = topology();
        for s in [
            Settlement::Closed {
                why: "x",
                recheck_after: None,
            },
            Settlement::Compensated { refunded: false },
            Settlement::PaidAfterClose {
                newly_recorded: true,
            },
            Settlement::PaidAfterClose {
                newly_recorded: false,
            },
            Settlement::Rechecked { found: "x" },
            Settlement::AlreadySettled(OrderStatus::Paid),
        ] {
            assert_eq!(dispose(s, 3, 8, &t), Disposition::Ack);
        }
        let closed = Settlement::Closed {
            why: "ORDER_NOT_EXIST",
            recheck_after: Some(Duration::from_mins(10)),
        };
        assert_eq!(
            dispose(closed, 0, 8, &t),
            Disposition::AckAndRecheck {
                delay: Duration::from_mins(10)
            }
        );
    }

    #[test]
    fn retries_climb_the_ladder_and_end_parked() {
        let t = topology(); // 5s, 30s, 2m, 10m
        let delays: Vec<Duration> = (0..6)
            .map(|attempt| match dispose(retry("503"), attempt, 8, &t) {
                Disposition::Redelay {
                    delay,
                    attempt: next,
                    reason,
                    ..
                } => {
                    assert_eq!(next, attempt + 1);
                    assert_eq!(reason, reason::RETRY);
                    delay
                }
                other => panic!("{other:?}"),
            })
            .collect();
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [5, 30, 120, 600, 600, 600]);
        match dispose(retry("503"), 7, 8, &t) {
            Disposition::Park {
                reason,
                detail,
                attempt,
            } => {
                assert_eq!(attempt, 8);
                assert_eq!(reason, reason::RETRIES_EXHAUSTED);
                assert!(
                    detail.contains("gave up after 8 attempts; last: 503"),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rate_limit_hint_and_a_paying_buyer_shape_the_delay() {
        let t = topology();
        let limited = Settlement::RetryLater {
            reason: "429".into(),
            not_before: Some(Duration::from_secs(45)),
            user_paying: false,
        };
        assert!(
            matches!(dispose(limited, 0, 8, &t), Disposition::Redelay { delay, .. } if delay == Duration::from_secs(45))
        );
        let paying = Settlement::RetryLater {
            reason: "USERPAYING".into(),
            not_before: None,
            user_paying: true,
        };
        assert!(
            matches!(dispose(paying, 5, 8, &t), Disposition::Redelay { delay, .. } if delay == Duration::from_secs(5))
        );
    }

    #[test]
    fn early_messages_wait_without_spending_an_attempt_and_bad_ones_park() {
        let t = topology();
        let early = Settlement::NotYetDue {
            remaining: Duration::from_secs(90),
        };
        assert!(matches!(
            dispose(early, 2, 8, &t),
            Disposition::Redelay {
                attempt: 2,
                reason: reason::NOT_YET_DUE,
                ..
            }
        ));
        assert!(matches!(
            dispose(Settlement::UnknownOrder, 0, 8, &t),
            Disposition::Park {
                reason: reason::UNKNOWN_ORDER,
                ..
            }
        ));
        let permanent = Settlement::GiveUp {
            reason: "NO_AUTH".into(),
        };
        assert!(matches!(
            dispose(permanent, 0, 8, &t),
            Disposition::Park {
                attempt: 1,
                reason: reason::PERMANENT_ERROR,
                ..
            }
        ));
    }

    #[test]
    fn only_a_remainder_shorter_than_every_retry_delay_and_a_second_is_waited_in_the_lane() {
        let t = topology(); // 5s, 30s, 2m, 10m
        let early = |ms| Settlement::NotYetDue {
            remaining: Duration::from_millis(ms),
        };
        assert_eq!(
            wait_in_lane(&early(300), &t),
            Some(Duration::from_millis(300))
        );
        assert_eq!(wait_in_lane(&early(1000), &t), Some(IN_LANE_WAIT_MAX));
        assert_eq!(wait_in_lane(&early(1001), &t), None);
        assert_eq!(wait_in_lane(&early(7000), &t), None);
        assert_eq!(wait_in_lane(&retry("503"), &t), None);
        // A ladder whose shortest step fits the remainder: the queue, not the lane.
        let fine = topology()
            .with_retry_delays(&[Duration::from_millis(100)])
            .unwrap();
        assert_eq!(wait_in_lane(&early(300), &fine), None);
        assert_eq!(
            wait_in_lane(&early(60), &fine),
            Some(Duration::from_millis(60))
        );
    }

    #[test]
    fn an_anomaly_is_parked_under_its_own_name_at_once() {
        let t = topology();
        let s = Settlement::NeedsHuman {
            anomaly: Anomaly::AmountMismatch,
            detail: "100 fen, the order's total is 200 fen".into(),
        };
        assert_eq!(
            dispose(s, 0, 8, &t),
            Disposition::Park {
                attempt: 1,
                reason: "amount_mismatch",
                detail: "100 fen, the order's total is 200 fen".into(),
            }
        );
    }
}
