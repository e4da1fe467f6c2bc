//! The consumer: `--concurrency` lanes, each a thread with its own channel
//! (amiquip's `Channel` is `Send`, not `Sync`) consuming
//! `queue.ordertimeout` with manual acks, plus a confirmed publisher for the
//! retry, recheck and parking paths. A supervisor reconnects with back-off
//! when the connection or a consumer is lost.
//!
//! Acks: a message is acked only after its effect is committed (the
//! settlement's transaction) or after its successor (a retry, a recheck or a
//! parked copy) was confirmed by the broker. Anything else leaves it
//! unacked, and the broker redelivers it when the channel closes.
//!
//! A damaged topology (a successor returned as unroutable or nacked, or a
//! queue missing or declared with other arguments) stops consumption: the
//! message in hand goes back to the queue, and the supervisor checks the
//! topology again with growing pauses, logging at ERROR, until it is whole.
//! Nothing is lost and WeChat Pay is not asked again meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amiquip::{AmqpProperties, Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery};
use broker::headers::{self, Annotation};
use broker::topology::{PARKED_QUEUE, TIMEOUT_QUEUE};
use broker::{AmqpUrl, BrokerError, ConfirmedPublisher, Outcome, TimeoutMessage, Topology};
use chrono::Utc;
use crossbeam_channel::RecvTimeoutError;
use domain::OrderNo;
use service::{sleep_unless_stopped, Backoff};

use crate::dispose::{dispose, reason, Disposition};
use crate::settle::{Settlement, Settler, Trigger};
use crate::stats::Stats;

/// The longest nominal pause between two checks of a damaged topology
/// (jitter stretches a pause up to twice its nominal length).
const MAX_TOPOLOGY_BACKOFF: Duration = Duration::from_secs(15);
/// The longest nominal pause between two reconnects to a broker that is away.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// How the consumer behaves.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Lanes: threads, each with its own channel.
    pub concurrency: usize,
    /// Unacked messages the broker may hand each lane.
    pub prefetch: u16,
    /// Settlement attempts of one message before it is parked.
    pub max_attempts: u32,
    /// Sweep: how often, how overdue, how many per page.
    pub sweep_interval: Duration,
    pub sweep_grace: Duration,
    pub sweep_batch: i64,
    /// How often the summary line is logged.
    pub summary_interval: Duration,
}

/// The settling worker: consumer lanes, the sweep and the summary.
#[derive(Debug)]
pub struct Worker {
    pub(crate) settler: Settler,
    pub(crate) topology: Topology,
    amqp_url: AmqpUrl,
    pub(crate) settings: ConsumerSettings,
    pub(crate) stats: Arc<Stats>,
}

/// Why a consumer session ended.
#[derive(Debug)]
enum SessionEnd {
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
        outcome: Outcome,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SuccessorKind {
    Retry,
    Recheck,
    Park,
}

impl Worker {
    #[must_use]
    pub fn new(
        settler: Settler,
        topology: Topology,
        amqp_url: AmqpUrl,
        settings: ConsumerSettings,
    ) -> Self {
        Self {
            settler,
            topology,
            amqp_url,
            settings,
            stats: Arc::new(Stats::default()),
        }
    }

    #[must_use]
    pub fn settler(&self) -> &Settler {
        &self.settler
    }

    #[must_use]
    pub fn settings(&self) -> &ConsumerSettings {
        &self.settings
    }

    /// Runs the consumer, the sweep and the summary until `stop` is raised,
    /// then lets every lane finish the message in hand, gives prefetched
    /// messages back, and closes the connection.
    pub fn run(&self, stop: &AtomicBool) {
        std::thread::scope(|scope| {
            scope.spawn(|| self.sweep_loop(stop));
            scope.spawn(|| self.summary_loop(stop));
            // Jittered, so that workers cut off by one broker restart do not
            // all come back on the same schedule.
            let mut reconnect = Backoff::new(Duration::from_millis(200), MAX_RECONNECT_BACKOFF);
            let mut recheck = Backoff::new(Duration::from_millis(200), MAX_TOPOLOGY_BACKOFF);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let end = match self.session(stop) {
                    Ok(()) => {
                        reconnect.reset();
                        recheck.reset();
                        continue;
                    }
                    Err(end) => end,
                };
                // A session that ran a while was healthy: start the back-off
                // afresh. One that failed at once (or was refused a successor
                // at once) keeps growing it.
                if started.elapsed() > Duration::from_secs(30) {
                    reconnect.reset();
                    recheck.reset();
                }
                let pause = match &end {
                    SessionEnd::Lost(e) => {
                        let pause = reconnect.next_delay();
                        log::warn!("broker session ended: {e}; reconnecting in {pause:?}");
                        pause
                    }
                    SessionEnd::Topology(why) => {
                        let pause = recheck.next_delay();
                        log::error!(
                            "TOPOLOGY DAMAGED: {why}; not consuming {TIMEOUT_QUEUE} until it is whole \
                             again (run `order-producer declare`); checking again in {pause:?}"
                        );
                        pause
                    }
                };
                sleep_unless_stopped(pause, stop);
            }
            if let Some(summary) = self.stats.take_summary() {
                log::info!("{summary}");
            }
        });
    }

    /// One connection's life: open it, check the topology, run the lanes
    /// until they stop (on `stop`), one loses the broker, or one is refused
    /// a successor.
    fn session(&self, stop: &AtomicBool) -> Result<(), SessionEnd> {
        let mut conn = broker::connect(&self.amqp_url).map_err(SessionEnd::Lost)?;
        if let Err(e) = self.topology.check(&mut conn, &self.amqp_url) {
            let _ = conn.close();
            return Err(match e {
                BrokerError::TopologyMissing { .. } | BrokerError::TopologyMismatch(_) => {
                    SessionEnd::Topology(e.to_string())
                }
                other => SessionEnd::Lost(other),
            });
        }
        let mut lanes = Vec::with_capacity(self.settings.concurrency);
        for _ in 0..self.settings.concurrency {
            let channel = conn.open_channel(None).map_err(|e| {
                SessionEnd::Lost(BrokerError::Connection {
                    context: "failed to open a consumer channel".into(),
                    message: self.amqp_url.scrub(&e.to_string()),
                })
            })?;
            let publisher = ConfirmedPublisher::open(
                &mut conn,
                &self.amqp_url,
                broker::DEFAULT_CONFIRM_TIMEOUT,
            )
            .map_err(SessionEnd::Lost)?;
            lanes.push((channel, publisher));
        }
        log::info!(
            "consuming {TIMEOUT_QUEUE} on {} with {} lane(s), prefetch {}",
            self.amqp_url,
            lanes.len(),
            self.settings.prefetch
        );
        let broken = AtomicBool::new(false);
        let first_end: Mutex<Option<SessionEnd>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for (channel, publisher) in lanes {
                let (broken, first_end) = (&broken, &first_end);
                scope.spawn(move || {
                    if let Err(end) = self.lane(channel, publisher, stop, broken) {
                        broken.store(true, Ordering::Relaxed);
                        let mut slot = first_end
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        // A refusal explains a loss that follows it, not the
                        // other way round.
                        if slot.is_none() || matches!(end, SessionEnd::Topology(_)) {
                            *slot = Some(end);
                        }
                    }
                });
            }
        });
        let _ = conn.close();
        match first_end
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(end) => Err(end),
            None => Ok(()),
        }
    }

    fn lane(
        &self,
        channel: Channel,
        mut publisher: ConfirmedPublisher,
        stop: &AtomicBool,
        broken: &AtomicBool,
    ) -> Result<(), SessionEnd> {
        let consumer = match channel
            .qos(0, self.settings.prefetch, false)
            .and_then(|()| channel.basic_consume(TIMEOUT_QUEUE, ConsumerOptions::default()))
        {
            Ok(c) => c,
            Err(e) => {
                return Err(SessionEnd::Lost(BrokerError::Connection {
                    context: format!("could not consume {TIMEOUT_QUEUE}"),
                    message: self.amqp_url.scrub(&e.to_string()),
                }))
            }
        };
        let mut result = Ok(());
        let mut channel_alive = true;
        while !stop.load(Ordering::Relaxed) && !broken.load(Ordering::Relaxed) {
            match consumer.receiver().recv_timeout(Duration::from_millis(200)) {
                Ok(ConsumerMessage::Delivery(delivery)) => {
                    if broken.load(Ordering::Relaxed) {
                        // Another lane found the topology damaged: hand this
                        // one back untouched rather than ask WeChat Pay.
                        let _ = consumer.nack(delivery, true);
                        break;
                    }
                    match self.handle(&consumer, &mut publisher, delivery) {
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
                                result = Err(SessionEnd::Lost(BrokerError::Connection {
                                    context: "giving a message back".into(),
                                    message: self.amqp_url.scrub(&e.to_string()),
                                }));
                                break;
                            }
                            result = Err(SessionEnd::Topology(format!(
                                "the broker did not take a copy for {queue} ({outcome:?}); \
                                 the message went back to {TIMEOUT_QUEUE}"
                            )));
                            break;
                        }
                        Err(LaneError::Lost(e)) => {
                            channel_alive = false;
                            result = Err(SessionEnd::Lost(BrokerError::Connection {
                                context: "finishing a message (it will be redelivered)".into(),
                                message: e.to_string(),
                            }));
                            break;
                        }
                    }
                }
                Ok(ConsumerMessage::ClientCancelled) => return Ok(()),
                Ok(other) => {
                    channel_alive = false;
                    result = Err(SessionEnd::Lost(BrokerError::Connection {
                        context: format!("consuming {TIMEOUT_QUEUE}"),
                        message: format!("the consumer ended: {other:?}"),
                    }));
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    channel_alive = false;
                    result = Err(SessionEnd::Lost(BrokerError::Connection {
                        context: format!("consuming {TIMEOUT_QUEUE}"),
                        message: "the connection was lost".into(),
                    }));
                    break;
                }
            }
        }
        if channel_alive {
            // Stop taking messages; give back what was prefetched but not
            // started. Cancel and drain before dropping: dropping a live
            // amiquip Consumer can take the whole connection down.
            if consumer.cancel().is_ok() {
                while let Ok(message) = consumer.receiver().recv_timeout(Duration::from_secs(5)) {
                    match message {
                        ConsumerMessage::Delivery(d) => {
                            let _ = consumer.nack(d, true);
                        }
                        _ => break,
                    }
                }
            }
            drop(consumer);
            let _ = publisher.close();
            let _ = channel.close();
        }
        result
    }

    /// Looks at one delivery, acts, and acks only once the effect is
    /// committed or its successor confirmed. `Lost`: the broker is gone, the
    /// delivery was not acked and will come back. `Refused`: the successor
    /// was not taken; the delivery comes back with the error, unacked.
    fn handle(
        &self,
        consumer: &Consumer,
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
        let disposition = match TimeoutMessage::decode(&delivery.body) {
            Err(e) => Disposition::Park {
                attempt,
                reason: reason::POISON,
                detail: format!("poison message: {e}"),
            },
            Ok(message) => {
                let settlement = self.settler.settle(&message.order_no, trigger, Utc::now());
                self.stats.outcome(settlement.label());
                log_settlement(&message.order_no, &settlement, attempt + 1, started);
                self.dispose(settlement, attempt)
            }
        };
        let scrub = |e: amiquip::Error| {
            LaneError::Lost(BrokerError::Connection {
                context: "acknowledging a message".into(),
                message: self.amqp_url.scrub(&e.to_string()),
            })
        };
        let Some(successor) = self.successor(&delivery.properties, &disposition) else {
            return consumer.ack(delivery).map_err(scrub);
        };
        let outcome = publisher.publish_one(
            &successor.queue,
            &delivery.body,
            successor.properties.clone(),
        )?;
        if outcome != Outcome::Confirmed {
            // The successor was not taken: keep the original (the lane gives
            // it back) and stop consuming until the topology is whole again.
            return Err(LaneError::Refused {
                queue: successor.queue,
                outcome,
                delivery: Box::new(delivery),
            });
        }
        match successor.kind {
            SuccessorKind::Park => {
                self.stats.parked();
                log::error!(
                    "PARKED message {} in {PARKED_QUEUE} after {} attempt(s): {}: {}",
                    delivery
                        .properties
                        .message_id()
                        .as_deref()
                        .unwrap_or("(no message id)"),
                    headers::attempt_of(&successor.properties),
                    headers::text_of(&successor.properties, headers::REASON).unwrap_or_default(),
                    headers::text_of(&successor.properties, headers::DETAIL).unwrap_or_default(),
                );
            }
            SuccessorKind::Retry => self.stats.retry(),
            SuccessorKind::Recheck => {}
        }
        consumer.ack(delivery).map_err(scrub)
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
        };
        match disposition {
            Disposition::Ack => None,
            // Without a retry ladder the sweep does the recheck when it is due.
            Disposition::AckAndRecheck { delay } => {
                self.topology.retry_route(*delay).map(|q| Successor {
                    queue: q.name.clone(),
                    properties: headers::as_recheck(properties),
                    kind: SuccessorKind::Recheck,
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

    /// What to do with a message after this settlement (see [`dispose`]).
    #[must_use]
    pub fn dispose(&self, settlement: Settlement, attempt: u32) -> Disposition {
        dispose(
            settlement,
            attempt,
            self.settings.max_attempts,
            &self.topology,
        )
    }

    fn summary_loop(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            sleep_unless_stopped(self.settings.summary_interval, stop);
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if let Some(summary) = self.stats.take_summary() {
                log::info!("{summary}");
            }
        }
    }
}

/// Logs one line per settlement attempt: order, outcome, attempt, time.
pub fn log_settlement(order_no: &OrderNo, s: &Settlement, attempt: u32, started: Instant) {
    let ms = started.elapsed().as_millis();
    let tail = format!("attempt {attempt}, {ms} ms");
    match s {
        Settlement::Closed { why, recheck_after } => {
            let recheck = recheck_after
                .map(|d| format!("; recheck in {} s", d.as_secs()))
                .unwrap_or_default();
            log::info!("order {order_no}: closed, stock given back ({why}{recheck}); {tail}");
        }
        Settlement::Compensated { refunded } => {
            let how = if *refunded { " and refunded there" } else { "" };
            log::info!("order {order_no}: compensated, paid at WeChat Pay{how}; {tail}");
        }
        Settlement::PaidAfterClose => {
            log::error!("order {order_no}: paid after close, refund needed; {tail}");
        }
        Settlement::Rechecked { found } => {
            log::info!("order {order_no}: rechecked after close: {found}; {tail}");
        }
        Settlement::AlreadySettled(st) => {
            log::info!("order {order_no}: already {st}, nothing to do; {tail}");
        }
        Settlement::NotYetDue { remaining } => {
            log::info!(
                "order {order_no}: not due for {} ms, waiting; {tail}",
                remaining.as_millis()
            );
        }
        Settlement::UnknownOrder => log::warn!("order {order_no}: unknown order; {tail}"),
        Settlement::NeedsHuman { anomaly, detail } => {
            log::error!("order {order_no}: needs a human ({anomaly}: {detail}); {tail}");
        }
        Settlement::RetryLater { reason, .. } => {
            log::warn!("order {order_no}: retry later ({reason}); {tail}");
        }
        Settlement::GiveUp { reason } => {
            log::error!("order {order_no}: cannot settle ({reason}); {tail}");
        }
    }
}
