//! One lane: a thread with its own channel consuming `queue.ordertimeout`,
//! settling each delivery and carrying out its [`Disposition`]: ack, or
//! publish a successor (retry, recheck, parked copy) with a confirm and only
//! then ack. A successor the broker does not take stops the lane (and, via
//! the shared flag, the others) with the delivery given back: see the
//! supervisor in [`crate::supervisor`].
//!
//! Counting: each delivery is counted once, in the metrics handle, after
//! its effect is committed or its successor confirmed (the summary line
//! reads the same counters).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::headers::{self, Annotation};
use broker::topology::{PARKED_QUEUE, TIMEOUT_QUEUE};
use broker::{
    AmqpProperties, BrokerError, Confirmation, ConfirmedPublisher, ConsumerChannel, ConsumerEvent,
    Delivery, QueueConsumer, TimeoutMessage, Topology,
};
use chrono::Utc;
use service::Outcome;

use crate::dispose::{dispose, reason, wait_in_lane, Disposition};
use crate::settle::{Settler, Trigger};

/// Why a lane (and with it the consumer session) ended before `stop` was
/// raised.
#[derive(Debug)]
pub(crate) enum LaneEnd {
    /// The broker went away (or a consumer was cancelled): reconnect.
    Lost(BrokerError),
    /// The topology is missing, differs, or refused a successor: do not
    /// consume until a check passes.
    Topology(String),
}

/// Why one lane stopped before `stop` was raised.
#[derive(Debug)]
enum LaneError {
    Lost(BrokerError),
    /// The broker did not take a successor copy (returned or nacked); the
    /// delivery is handed back, still unacked, to be given back to the queue
    /// once the other lanes know to stop.
    Refused {
        queue: String,
        outcome: Confirmation,
        // Boxed: the error path is rare and a Delivery is large.
        delivery: Box<Delivery>,
    },
}

impl From<BrokerError> for LaneError {
    fn from(e: BrokerError) -> Self {
        Self::Lost(e)
    }
}

/// Where a lane's copy of a message goes, and as what.
struct Successor {
    queue: String,
    properties: AmqpProperties,
    kind: SuccessorKind,
    /// The retry queue's delay.
    delay: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SuccessorKind {
    Retry,
    Recheck,
    Park,
}

/// What every lane of a worker shares: the settler, the topology (retry
/// routes) and the attempt limit. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Lane {
    settler: Arc<Settler>,
    topology: Topology,
    max_attempts: u32,
}

impl Lane {
    #[must_use]
    pub fn new(settler: Arc<Settler>, topology: Topology, max_attempts: u32) -> Self {
        Self {
            settler,
            topology,
            max_attempts,
        }
    }

    /// Consumes `queue.ordertimeout` on `channel` until `stop` or `broken`
    /// is raised, the broker goes away, or a successor is refused (then it
    /// raises `broken` itself, so the other lanes stop too).
    pub(crate) fn run(
        &self,
        channel: ConsumerChannel,
        mut publisher: ConfirmedPublisher,
        stop: &AtomicBool,
        broken: &AtomicBool,
    ) -> Result<(), LaneEnd> {
        let consumer = channel.consume(TIMEOUT_QUEUE).map_err(LaneEnd::Lost)?;
        let mut result = Ok(());
        let mut channel_alive = true;
        while !stop.load(Ordering::Relaxed) && !broken.load(Ordering::Relaxed) {
            match consumer.next(Duration::from_millis(200)) {
                ConsumerEvent::Delivery(delivery) => {
                    if broken.load(Ordering::Relaxed) {
                        // Another lane found the topology damaged: hand this
                        // one back untouched rather than ask WeChat Pay.
                        let _ = consumer.nack(*delivery, true);
                        break;
                    }
                    match self.handle(&consumer, &mut publisher, *delivery) {
                        Ok(()) => {}
                        Err(LaneError::Refused {
                            queue,
                            outcome,
                            delivery,
                        }) => {
                            // Stop the other lanes first, so that none takes
                            // the message back up and asks WeChat Pay again.
                            broken.store(true, Ordering::Relaxed);
                            if let Err(e) = consumer.nack(*delivery, true) {
                                channel_alive = false;
                                result = Err(LaneEnd::Lost(e));
                                break;
                            }
                            result = Err(LaneEnd::Topology(format!(
                                "the broker did not take a copy for {queue} ({outcome:?}); \
                                 the message went back to {TIMEOUT_QUEUE}"
                            )));
                            break;
                        }
                        Err(LaneError::Lost(e)) => {
                            channel_alive = false;
                            result = Err(LaneEnd::Lost(BrokerError::Connection {
                                context: "finishing a message (it will be redelivered)".into(),
                                message: e.to_string(),
                            }));
                            break;
                        }
                    }
                }
                ConsumerEvent::Cancelled => return Ok(()),
                ConsumerEvent::Ended(how) => {
                    channel_alive = false;
                    result = Err(LaneEnd::Lost(BrokerError::Connection {
                        context: format!("consuming {TIMEOUT_QUEUE}"),
                        message: format!("the consumer ended: {how}"),
                    }));
                    break;
                }
                ConsumerEvent::Idle => {}
                ConsumerEvent::Lost => {
                    channel_alive = false;
                    result = Err(LaneEnd::Lost(BrokerError::Connection {
                        context: format!("consuming {TIMEOUT_QUEUE}"),
                        message: "the connection was lost".into(),
                    }));
                    break;
                }
            }
        }
        if channel_alive {
            // Stop taking messages; give back what was prefetched but not
            // started (the broker crate cancels before dropping).
            consumer.stop();
            let _ = publisher.close();
            channel.close();
        }
        result
    }

    /// Looks at one delivery, acts, and acks only once the effect is
    /// committed or its successor confirmed. `Lost`: the broker is gone, the
    /// delivery was not acked and will come back. `Refused`: the successor
    /// was not taken; the delivery comes back with the error, unacked.
    fn handle(
        &self,
        consumer: &QueueConsumer<'_>,
        publisher: &mut ConfirmedPublisher,
        delivery: Delivery,
    ) -> Result<(), LaneError> {
        let started = Instant::now();
        let attempt = headers::attempt_of(&delivery.properties);
        let trigger = if headers::is_recheck(&delivery.properties) {
            Trigger::Recheck
        } else {
            Trigger::Message
        };
        let (disposition, settled) = match TimeoutMessage::decode(&delivery.body) {
            Err(e) => (
                Disposition::Park {
                    attempt,
                    reason: reason::POISON,
                    detail: format!("poison message: {e}"),
                },
                Outcome::Parked,
            ),
            Ok(message) => {
                let mut settlement = self.settler.settle(&message.order_no, trigger, Utc::now());
                // A deadline at most a second away that no retry queue is
                // short enough for: wait here rather than a whole retry
                // delay (see `dispose::wait_in_lane`). Twice at most: a
                // clock that still says "early" falls back to the queue.
                for _ in 0..2 {
                    let Some(wait) = wait_in_lane(&settlement, &self.topology) else {
                        break;
                    };
                    log::debug!(
                        order_no:% = message.order_no,
                        attempt = attempt + 1;
                        "order {}: not due for {} ms, waiting in the lane",
                        message.order_no,
                        wait.as_millis()
                    );
                    std::thread::sleep(wait + Duration::from_millis(1));
                    settlement = self.settler.settle(&message.order_no, trigger, Utc::now());
                }
                let settled = settlement.outcome();
                settlement.log(&message.order_no, settled, attempt + 1, started.elapsed());
                (
                    dispose(settlement, attempt, self.max_attempts, &self.topology),
                    settled,
                )
            }
        };
        let metrics = self.settler.metrics();
        let Some(successor) = self.successor(&delivery.properties, &disposition) else {
            metrics.settlement(settled, trigger);
            return Ok(consumer.ack(delivery)?);
        };
        let outcome = publisher.publish_one(
            &successor.queue,
            &delivery.body,
            successor.properties.clone(),
        )?;
        if outcome != Confirmation::Confirmed {
            // The successor was not taken: keep the original (the lane gives
            // it back) and stop consuming until the topology is whole again.
            return Err(LaneError::Refused {
                queue: successor.queue,
                outcome,
                delivery: Box::new(delivery),
            });
        }
        // Counted once the successor is taken: a parked message is parked
        // whatever its settlement said (an anomaly stays an anomaly).
        let settled = match (successor.kind, settled) {
            (SuccessorKind::Park, Outcome::Anomaly) => Outcome::Anomaly,
            (SuccessorKind::Park, _) => Outcome::Parked,
            (_, o) => o,
        };
        metrics.settlement(settled, trigger);
        match successor.kind {
            SuccessorKind::Park => {
                metrics.parked(
                    headers::text_of(&successor.properties, headers::REASON)
                        .as_deref()
                        .unwrap_or("unknown"),
                );
                log_parked(&delivery.properties, &successor.properties);
            }
            SuccessorKind::Retry => {
                // A message that came early waits in a retry queue too, but
                // is no retry: one meaning of "retry" in the summary and the
                // metric.
                if settled == Outcome::Retry {
                    if let Some(delay) = successor.delay {
                        metrics.retry(delay);
                    }
                }
            }
            SuccessorKind::Recheck => {}
        }
        Ok(consumer.ack(delivery)?)
    }

    /// The copy a disposition hands on, if any.
    fn successor(
        &self,
        properties: &AmqpProperties,
        disposition: &Disposition,
    ) -> Option<Successor> {
        let park = |attempt, reason, detail: &str| Successor {
            queue: PARKED_QUEUE.to_owned(),
            properties: headers::annotate(
                properties,
                Annotation {
                    attempt,
                    reason,
                    detail,
                    parked_at: Some(Utc::now()),
                },
            ),
            kind: SuccessorKind::Park,
            delay: None,
        };
        match disposition {
            Disposition::Ack => None,
            // Without a retry ladder the sweep does the recheck when it is due.
            Disposition::AckAndRecheck { delay } => {
                self.topology.retry_route(*delay).map(|q| Successor {
                    queue: q.name.clone(),
                    properties: headers::as_recheck(properties),
                    kind: SuccessorKind::Recheck,
                    delay: Some(q.ttl),
                })
            }
            Disposition::Redelay {
                delay,
                attempt,
                reason,
                detail,
            } => Some(match self.topology.retry_route(*delay) {
                Some(q) => Successor {
                    queue: q.name.clone(),
                    properties: headers::annotate(
                        properties,
                        Annotation {
                            attempt: *attempt,
                            reason,
                            detail,
                            parked_at: None,
                        },
                    ),
                    kind: SuccessorKind::Retry,
                    delay: Some(q.ttl),
                },
                None => park(
                    *attempt,
                    reason::NO_RETRY_QUEUE,
                    &format!("no retry queue configured; {detail}"),
                ),
            }),
            Disposition::Park {
                attempt,
                reason,
                detail,
            } => Some(park(*attempt, reason, detail)),
        }
    }
}

/// The loud line of a parked message (`properties` the original's,
/// `parked` the copy's): key-values `order_no` (the message id, the order
/// number by the message contract), `outcome` (`parked`), `reason` (the
/// parking reason's code) and `attempt`.
fn log_parked(properties: &AmqpProperties, parked: &AmqpProperties) {
    let id = properties.message_id().as_deref();
    let reason = headers::text_of(parked, headers::REASON);
    let attempt = headers::attempt_of(parked);
    log::error!(
        order_no = id,
        outcome:% = Outcome::Parked,
        reason = reason.as_deref(),
        attempt = attempt;
        "PARKED message {} in {PARKED_QUEUE} after {attempt} attempt(s): {}: {}",
        id.unwrap_or("(no message id)"),
        reason.as_deref().unwrap_or_default(),
        headers::text_of(parked, headers::DETAIL).unwrap_or_default(),
    );
}
