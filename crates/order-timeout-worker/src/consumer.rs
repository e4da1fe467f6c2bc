//! The consumer: `--concurrency` lanes, each a thread with its own channel
//! (amiquip's `Channel` is `Send`, not `Sync`) consuming
//! `queue.ordertimeout` with manual acks, plus a confirmed publisher for the
//! retry and parking paths. A supervisor reconnects with back-off when the
//! connection or a consumer is lost.
//!
//! Acks: a message is acked only after its effect is committed (the
//! settlement's transaction) or after its successor (a retry or a parked
//! copy) was confirmed by the broker. Anything else leaves it unacked, and
//! the broker redelivers it when the channel closes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amiquip::{
    AmqpProperties, AmqpValue, Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery,
    FieldTable,
};
use broker::topology::{PARKED_QUEUE, TIMEOUT_QUEUE};
use broker::{AmqpUrl, BrokerError, ConfirmedPublisher, Outcome, TimeoutMessage, Topology};
use chrono::Utc;
use crossbeam_channel::RecvTimeoutError;
use domain::OrderNo;

use crate::settle::{Settlement, Settler, Trigger};
use crate::stats::Stats;

/// Header holding how many settlement attempts a message has had.
pub const ATTEMPT_HEADER: &str = "x-ot-attempt";
/// Header holding why a message was retried or parked.
pub const REASON_HEADER: &str = "x-ot-reason";
/// Header holding when a message was parked (RFC 3339).
pub const PARKED_AT_HEADER: &str = "x-ot-parked-at";

/// How the consumer behaves.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Lanes: threads, each with its own channel.
    pub concurrency: usize,
    /// Unacked messages the broker may hand each lane.
    pub prefetch: u16,
    /// Settlement attempts of one message before it is parked.
    pub max_attempts: u32,
    /// Sweep: how often, how overdue, how many per batch.
    pub sweep_interval: Duration,
    pub sweep_grace: Duration,
    pub sweep_batch: i64,
    /// How often the summary line is logged.
    pub summary_interval: Duration,
}

/// What to do with a delivery once it has been looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The order is settled (or needs nothing): ack.
    Ack,
    /// Look again after `delay`: publish a copy to a retry queue, then ack.
    Redelay {
        delay: Duration,
        attempt: u32,
        reason: String,
    },
    /// Give up: publish a copy to the parking queue with the reason, then ack.
    Park { reason: String, attempt: u32 },
}

/// The settling worker: consumer lanes, the sweep and the summary.
#[derive(Debug)]
pub struct Worker {
    settler: Settler,
    topology: Topology,
    amqp_url: AmqpUrl,
    settings: ConsumerSettings,
    stats: Arc<Stats>,
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
            let mut backoff = Duration::from_millis(200);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match self.session(stop) {
                    Ok(()) => backoff = Duration::from_millis(200),
                    Err(e) => {
                        if started.elapsed() > Duration::from_secs(30) {
                            backoff = Duration::from_millis(200);
                        }
                        log::warn!("broker session ended: {e}; reconnecting in {backoff:?}");
                        broker::sleep_unless_stopped(backoff, stop);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            if let Some(summary) = self.stats.take_summary() {
                log::info!("{summary}");
            }
        });
    }

    /// One connection's life: open it, check the topology, run the lanes
    /// until they stop (on `stop`) or one loses the broker.
    fn session(&self, stop: &AtomicBool) -> Result<(), BrokerError> {
        let mut conn = broker::connect(&self.amqp_url)?;
        self.topology.check(&mut conn, &self.amqp_url)?;
        let mut lanes = Vec::with_capacity(self.settings.concurrency);
        for _ in 0..self.settings.concurrency {
            let channel = conn
                .open_channel(None)
                .map_err(|e| BrokerError::Connection {
                    context: "failed to open a consumer channel".into(),
                    message: self.amqp_url.scrub(&e.to_string()),
                })?;
            let publisher =
                ConfirmedPublisher::open(&mut conn, &self.amqp_url, Duration::from_secs(10))?;
            lanes.push((channel, publisher));
        }
        log::info!(
            "consuming {TIMEOUT_QUEUE} on {} with {} lane(s), prefetch {}",
            self.amqp_url,
            lanes.len(),
            self.settings.prefetch
        );
        let broken = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for (channel, publisher) in lanes {
                let broken = &broken;
                scope.spawn(move || self.lane(channel, publisher, stop, broken));
            }
        });
        let _ = conn.close();
        if broken.load(Ordering::Relaxed) {
            Err(BrokerError::Connection {
                context: format!("consuming {TIMEOUT_QUEUE}"),
                message: "the connection, a channel or a consumer was lost".into(),
            })
        } else {
            Ok(())
        }
    }

    fn lane(
        &self,
        channel: Channel,
        mut publisher: ConfirmedPublisher,
        stop: &AtomicBool,
        broken: &AtomicBool,
    ) {
        let consumer = match channel
            .qos(0, self.settings.prefetch, false)
            .and_then(|()| channel.basic_consume(TIMEOUT_QUEUE, ConsumerOptions::default()))
        {
            Ok(c) => c,
            Err(e) => {
                log::warn!(
                    "could not consume {TIMEOUT_QUEUE}: {}",
                    self.amqp_url.scrub(&e.to_string())
                );
                broken.store(true, Ordering::Relaxed);
                return;
            }
        };
        let mut channel_alive = true;
        while !stop.load(Ordering::Relaxed) && !broken.load(Ordering::Relaxed) {
            match consumer.receiver().recv_timeout(Duration::from_millis(200)) {
                Ok(ConsumerMessage::Delivery(delivery)) => {
                    if let Err(e) = self.handle(&consumer, &mut publisher, delivery) {
                        log::warn!("lost the broker while finishing a message (it will be redelivered): {e}");
                        broken.store(true, Ordering::Relaxed);
                        channel_alive = false;
                    }
                }
                Ok(ConsumerMessage::ClientCancelled) => return,
                Ok(other) => {
                    log::warn!("consumer of {TIMEOUT_QUEUE} ended: {other:?}");
                    broken.store(true, Ordering::Relaxed);
                    channel_alive = false;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    broken.store(true, Ordering::Relaxed);
                    channel_alive = false;
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
    }

    /// Looks at one delivery, acts, and acks only once the effect is
    /// committed or its successor confirmed. An error means the broker is
    /// gone: the delivery was not acked and will come back.
    fn handle(
        &self,
        consumer: &Consumer,
        publisher: &mut ConfirmedPublisher,
        delivery: Delivery,
    ) -> Result<(), BrokerError> {
        let started = Instant::now();
        let attempt = attempt_of(&delivery.properties);
        let disposition = match TimeoutMessage::decode(&delivery.body) {
            Err(e) => Disposition::Park {
                reason: format!("poison message: {e}"),
                attempt,
            },
            Ok(message) => {
                let settlement =
                    self.settler
                        .settle(&message.order_no, Trigger::Message, Utc::now());
                self.stats.outcome(settlement.label());
                log_settlement(&message.order_no, &settlement, attempt + 1, started);
                self.dispose(settlement, attempt)
            }
        };
        let successor = match &disposition {
            Disposition::Ack => None,
            Disposition::Redelay {
                delay,
                attempt,
                reason,
            } => match self.topology.retry_route(*delay) {
                Some(q) => Some((q.name.clone(), *attempt, reason.clone(), false)),
                None => Some((
                    PARKED_QUEUE.to_owned(),
                    *attempt,
                    format!("no retry queue configured; {reason}"),
                    true,
                )),
            },
            Disposition::Park { reason, attempt } => {
                Some((PARKED_QUEUE.to_owned(), *attempt, reason.clone(), true))
            }
        };
        let scrub = |e: amiquip::Error| BrokerError::Connection {
            context: "acknowledging a message".into(),
            message: self.amqp_url.scrub(&e.to_string()),
        };
        let Some((queue, attempt, reason, parking)) = successor else {
            return consumer.ack(delivery).map_err(scrub);
        };
        let properties = with_headers(&delivery.properties, attempt, &reason, parking);
        match publisher.publish_one(&queue, &delivery.body, properties)? {
            Outcome::Confirmed => {
                if parking {
                    self.stats.parked();
                    log::error!(
                        "PARKED message {} in {PARKED_QUEUE} after {attempt} attempt(s): {reason}",
                        delivery
                            .properties
                            .message_id()
                            .as_deref()
                            .unwrap_or("(no message id)")
                    );
                } else {
                    self.stats.retry();
                }
                consumer.ack(delivery).map_err(scrub)
            }
            other => {
                // The successor was not taken: keep the original (requeued),
                // after a pause so a refusing broker is not hammered.
                log::warn!("could not hand the message on to {queue} ({other:?}); requeueing it");
                std::thread::sleep(Duration::from_secs(1));
                consumer.nack(delivery, true).map_err(scrub)
            }
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

    /// One sweep pass: settles pending orders whose deadline passed more
    /// than `sweep_grace` ago, through the same code path as messages. Only
    /// one worker sweeps at a time (an advisory lock); returns `None` when
    /// another holds it.
    pub fn sweep_once(&self) -> Result<Option<usize>, domain::StoreError> {
        self.sweep_until(&AtomicBool::new(false))
    }

    /// [`Worker::sweep_once`], stopping between orders once `stop` is raised
    /// (so SIGTERM is not held up by a long sweep).
    pub fn sweep_until(&self, stop: &AtomicBool) -> Result<Option<usize>, domain::StoreError> {
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Locked {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            locked: bool,
        }
        const SWEEP_LOCK: i64 = 0x6f74_5f73_7765_6570; // "ot_sweep"
        let mut conn = self
            .settler
            .pool()
            .get()
            .map_err(|e| domain::StoreError::Connect(e.to_string()))?;
        let locked = diesel::sql_query(format!(
            "SELECT pg_try_advisory_lock({SWEEP_LOCK}) AS locked"
        ))
        .get_result::<Locked>(&mut conn)?
        .locked;
        if !locked {
            return Ok(None);
        }
        let result = self.sweep_batches(&mut conn, stop);
        let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({SWEEP_LOCK})"))
            .execute(&mut conn);
        result.map(Some)
    }

    fn sweep_batches(
        &self,
        conn: &mut domain::PgConnection,
        stop: &AtomicBool,
    ) -> Result<usize, domain::StoreError> {
        let grace =
            chrono::Duration::from_std(self.settings.sweep_grace).unwrap_or(chrono::Duration::MAX);
        let mut settled = 0;
        // Orders that stay pending (retry later) come back in every batch:
        // stop when a batch settles nothing, and after a bounded number of batches.
        for _ in 0..10 {
            let due =
                domain::pending_past_deadline(conn, Utc::now() - grace, self.settings.sweep_batch)?;
            let mut progress = 0;
            for order in &due {
                if stop.load(Ordering::Relaxed) {
                    return Ok(settled + progress);
                }
                let started = Instant::now();
                let s = self
                    .settler
                    .settle(&order.order_no, Trigger::Sweep, Utc::now());
                self.stats.outcome(s.label());
                log_settlement(&order.order_no, &s, 1, started);
                if s.is_final() {
                    progress += 1;
                } else if let Settlement::GiveUp { reason } = &s {
                    log::error!(
                        "sweep cannot settle order {}: {reason}; a human must look",
                        order.order_no
                    );
                }
            }
            settled += progress;
            if progress == 0 || (due.len() as i64) < self.settings.sweep_batch {
                break;
            }
        }
        Ok(settled)
    }

    fn sweep_loop(&self, stop: &AtomicBool) {
        loop {
            broker::sleep_unless_stopped(self.settings.sweep_interval, stop);
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match self.sweep_until(stop) {
                Ok(Some(n)) if n > 0 => log::info!("sweep settled {n} overdue order(s)"),
                Ok(_) => {}
                Err(e) => log::warn!("sweep failed (will try again): {e}"),
            }
        }
    }

    fn summary_loop(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            broker::sleep_unless_stopped(self.settings.summary_interval, stop);
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if let Some(summary) = self.stats.take_summary() {
                log::info!("{summary}");
            }
        }
    }
}

/// What to do with a message that had `attempt` earlier attempts (0 for
/// the first) and whose settlement attempt gave `settlement`: ack when the
/// order is settled; park when it cannot be (unknown order, permanent
/// error) or after `max_attempts`; otherwise delay it on the retry ladder
/// of `topology`. A message that came before its deadline is delayed for
/// the rest without counting an attempt.
#[must_use]
pub fn dispose(
    settlement: Settlement,
    attempt: u32,
    max_attempts: u32,
    topology: &Topology,
) -> Disposition {
    match settlement {
        Settlement::Closed { .. }
        | Settlement::Compensated { .. }
        | Settlement::PaidAfterClose
        | Settlement::AlreadySettled(_) => Disposition::Ack,
        Settlement::UnknownOrder => Disposition::Park {
            reason: "unknown order: no such order in the database".into(),
            attempt,
        },
        Settlement::GiveUp { reason } => Disposition::Park {
            reason,
            attempt: attempt + 1,
        },
        Settlement::NotYetDue { remaining } => Disposition::Redelay {
            delay: remaining,
            attempt,
            reason: "payment deadline not reached yet".into(),
        },
        Settlement::RetryLater {
            reason,
            not_before,
            user_paying,
        } => {
            let next = attempt + 1;
            if next >= max_attempts {
                Disposition::Park {
                    reason: format!("gave up after {next} attempts; last: {reason}"),
                    attempt: next,
                }
            } else {
                Disposition::Redelay {
                    delay: backoff(topology, next, not_before, user_paying),
                    attempt: next,
                    reason,
                }
            }
        }
    }
}

/// The retry delay after `attempts` failed attempts: the ladder's step (the
/// shortest while the buyer is paying), at least `not_before`.
fn backoff(
    topology: &Topology,
    attempts: u32,
    not_before: Option<Duration>,
    user_paying: bool,
) -> Duration {
    let ladder = topology.retry_queues();
    let step = if user_paying {
        0
    } else {
        (attempts as usize)
            .saturating_sub(1)
            .min(ladder.len().saturating_sub(1))
    };
    let base = ladder.get(step).map_or(Duration::from_secs(5), |q| q.ttl);
    base.max(not_before.unwrap_or(Duration::ZERO))
}

/// Logs one line per settlement attempt: order, outcome, attempt, time.
pub fn log_settlement(order_no: &OrderNo, s: &Settlement, attempt: u32, started: Instant) {
    let ms = started.elapsed().as_millis();
    let tail = format!("attempt {attempt}, {ms} ms");
    match s {
        Settlement::Closed { why } => {
            log::info!("order {order_no}: closed, stock given back ({why}); {tail}");
        }
        Settlement::Compensated { refunded } => {
            let how = if *refunded { " and refunded there" } else { "" };
            log::info!("order {order_no}: compensated, paid at WeChat Pay{how}; {tail}");
        }
        Settlement::PaidAfterClose => {
            log::error!("order {order_no}: paid after close, refund needed; {tail}");
        }
        Settlement::AlreadySettled(st) => {
            log::info!("order {order_no}: already {st}, nothing to do; {tail}");
        }
        Settlement::NotYetDue { remaining } => {
            log::info!("order {order_no}: not due for {remaining:?}; {tail}");
        }
        Settlement::UnknownOrder => log::warn!("order {order_no}: unknown order; {tail}"),
        Settlement::RetryLater { reason, .. } => {
            log::warn!("order {order_no}: retry later ({reason}); {tail}");
        }
        Settlement::GiveUp { reason } => {
            log::error!("order {order_no}: cannot settle ({reason}); {tail}");
        }
    }
}

/// The attempt count carried by a message (0 when absent).
#[must_use]
pub fn attempt_of(properties: &AmqpProperties) -> u32 {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.get(ATTEMPT_HEADER))
        .and_then(|v| match v {
            AmqpValue::LongLongInt(n) => u32::try_from(*n).ok(),
            AmqpValue::LongInt(n) => u32::try_from(*n).ok(),
            AmqpValue::LongUInt(n) => Some(*n),
            AmqpValue::ShortInt(n) => u32::try_from(*n).ok(),
            AmqpValue::ShortUInt(n) => Some(u32::from(*n)),
            _ => None,
        })
        .unwrap_or(0)
}

fn with_headers(
    properties: &AmqpProperties,
    attempt: u32,
    reason: &str,
    parking: bool,
) -> AmqpProperties {
    let mut headers: FieldTable = properties.headers().clone().unwrap_or_default();
    headers.insert(
        ATTEMPT_HEADER.into(),
        AmqpValue::LongLongInt(i64::from(attempt)),
    );
    let reason: String = reason.chars().take(1000).collect();
    headers.insert(REASON_HEADER.into(), AmqpValue::LongString(reason));
    if parking {
        headers.insert(
            PARKED_AT_HEADER.into(),
            AmqpValue::LongString(Utc::now().to_rfc3339()),
        );
    }
    properties.clone().with_headers(headers)
}

#[cfg(test)]
mod tests {
    use broker::QueueType;
    use domain::OrderStatus;

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
    fn settled_orders_are_acked() {
        let t = topology();
        for s in [
            Settlement::Closed { why: "x" },
            Settlement::Compensated { refunded: false },
            Settlement::PaidAfterClose,
            Settlement::AlreadySettled(OrderStatus::Paid),
        ] {
            assert_eq!(dispose(s, 3, 8, &t), Disposition::Ack);
        }
    }

    #[test]
    fn retries_climb_the_ladder_and_end_parked() {
        let t = topology(); // 5s, 30s, 2m, 10m
        let delays: Vec<Duration> = (0..6)
            .map(|attempt| match dispose(retry("503"), attempt, 8, &t) {
                Disposition::Redelay {
                    delay,
                    attempt: next,
                    ..
                } => {
                    assert_eq!(next, attempt + 1);
                    delay
                }
                other => panic!("{other:?}"),
            })
            .collect();
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [5, 30, 120, 600, 600, 600]);
        match dispose(retry("503"), 7, 8, &t) {
            Disposition::Park { reason, attempt } => {
                assert_eq!(attempt, 8);
                assert!(
                    reason.contains("gave up after 8 attempts; last: 503"),
                    "{reason}"
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
            Disposition::Redelay { attempt: 2, .. }
        ));
        assert!(matches!(
            dispose(Settlement::UnknownOrder, 0, 8, &t),
            Disposition::Park { .. }
        ));
        let permanent = Settlement::GiveUp {
            reason: "NO_AUTH".into(),
        };
        assert!(matches!(
            dispose(permanent, 0, 8, &t),
            Disposition::Park { attempt: 1, .. }
        ));
    }

    #[test]
    fn the_attempt_header_is_read_in_any_integer_type() {
        let mut headers = FieldTable::new();
        assert_eq!(attempt_of(&AmqpProperties::default()), 0);
        headers.insert(ATTEMPT_HEADER.into(), AmqpValue::LongInt(3));
        assert_eq!(
            attempt_of(&AmqpProperties::default().with_headers(headers.clone())),
            3
        );
        headers.insert(ATTEMPT_HEADER.into(), AmqpValue::LongLongInt(7));
        let props = with_headers(
            &AmqpProperties::default().with_headers(headers),
            8,
            "why",
            true,
        );
        assert_eq!(attempt_of(&props), 8);
        let h = props.headers().as_ref().unwrap();
        assert_eq!(
            h.get(REASON_HEADER),
            Some(&AmqpValue::LongString("why".into()))
        );
        assert!(h.contains_key(PARKED_AT_HEADER));
    }
}
