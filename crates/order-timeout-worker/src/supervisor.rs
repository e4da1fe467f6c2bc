//! The worker and its supervisor. [`Worker::run`] composes the parts, each
//! in its own module and each holding the one shared [`Settler`]: the
//! consumer lanes ([`crate::lane`]), the sweep ([`crate::sweep`]), the
//! refunds ([`crate::refund`]) and the summary line ([`crate::summary`]).
//! The supervisor here runs one connection's session of
//! `--worker-concurrency` lanes (each a thread with its own channel, since
//! amiquip's `Channel` is `Send`, not `Sync`), reconnecting with jittered
//! back-off when the connection or a consumer is lost.
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

use broker::topology::TIMEOUT_QUEUE;
use broker::{AmqpUrl, BrokerError, ConfirmedPublisher, Topology};
use service::{sleep_unless_stopped, Backoff, Metrics};

use crate::dispose::{ladder, reason};
use crate::lane::{Lane, LaneEnd};
use crate::refund::{self, Refunder};
use crate::settle::Settler;
use crate::summary::Summary;
use crate::sweep::Sweeper;

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
    /// How often due refunds are claimed and acted on.
    pub refund_interval: Duration,
    /// Where WeChat Pay sends refund notifications (the front door's
    /// `/wechatpay/notify/refund`); `None`: refunds are followed by asking.
    pub refund_notify_url: Option<String>,
}

/// Waits until the broker answers, then checks the topology once: what the
/// worker does at start. A broker that cannot be reached (down, restarting,
/// the vhost not there yet) is an outage: it is retried with jittered
/// back-off, logged at WARN, as the relay does, while readiness stays false.
/// A topology that is missing or differs, and credentials the broker
/// refuses, are configuration: returned as the error (exit 2). `Ok(false)`: `stop` was raised while waiting.
pub fn await_topology(
    topology: &Topology,
    url: &AmqpUrl,
    stop: &AtomicBool,
) -> Result<bool, BrokerError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), MAX_RECONNECT_BACKOFF);
    while !stop.load(Ordering::Relaxed) {
        let outage = match broker::connect(url) {
            Ok(mut conn) => {
                let checked = topology.check(&mut conn, url);
                let _ = conn.close();
                match checked {
                    Ok(()) => return Ok(true),
                    Err(
                        e @ (BrokerError::TopologyMissing { .. }
                        | BrokerError::TopologyMismatch(_)
                        | BrokerError::RetryDelaysDiffer { .. }),
                    ) => return Err(e),
                    Err(other) => other,
                }
            }
            // A wrong password does not get right by waiting: exit 2.
            Err(e @ BrokerError::AccessRefused { .. }) => return Err(e),
            Err(e) => e,
        };
        let pause = backoff.next_delay();
        log::warn!(
            "waiting for the broker at {url}: {outage}; trying again in {pause:?} \
             (not ready meanwhile; is RabbitMQ running and AMQP_URL right?)"
        );
        sleep_unless_stopped(pause, stop);
    }
    Ok(false)
}

/// The settling worker: consumer lanes, the sweep, the refunds and the
/// summary, sharing one settler.
#[derive(Debug)]
pub struct Worker {
    settler: Arc<Settler>,
    lane: Lane,
    sweeper: Sweeper,
    refunder: Refunder,
    summary: Arc<Summary>,
    topology: Topology,
    amqp_url: AmqpUrl,
    settings: ConsumerSettings,
}

impl Worker {
    /// The worker always counts into enabled metrics, listened to or not:
    /// the summary line reads them. A settler with disabled metrics gets
    /// its own handle here.
    #[must_use]
    pub fn new(
        settler: Settler,
        topology: Topology,
        amqp_url: AmqpUrl,
        settings: ConsumerSettings,
    ) -> Self {
        let settler = if settler.metrics().is_enabled() {
            settler
        } else {
            settler.with_metrics(Metrics::new("worker"))
        };
        let ladder = ladder(&topology);
        let metrics = settler.metrics();
        metrics.init_retry_delays(ladder.steps());
        metrics.init_parked_reasons(&reason::PARKED);
        metrics.init_parked_reasons(&domain::Anomaly::ALL.map(domain::Anomaly::as_str));
        let settler = Arc::new(settler);
        Self {
            lane: Lane::new(
                Arc::clone(&settler),
                topology.clone(),
                settings.max_attempts,
            ),
            sweeper: Sweeper::new(Arc::clone(&settler), ladder.clone(), &settings),
            refunder: Refunder::new(Arc::clone(&settler), ladder.clone())
                .with_notify_url(settings.refund_notify_url.clone()),
            summary: Arc::new(Summary::new(Arc::clone(&settler), ladder)),
            settler,
            topology,
            amqp_url,
            settings,
        }
    }

    /// The summary line's counts (shared: they keep counting while it runs).
    #[must_use]
    pub fn summary(&self) -> Arc<Summary> {
        Arc::clone(&self.summary)
    }

    /// Runs the lanes, the sweep, the refunds and the summary until `stop`
    /// is raised, then lets every lane finish the message in hand, gives
    /// prefetched messages back, and closes the connection.
    pub fn run(&self, stop: &AtomicBool) {
        std::thread::scope(|scope| {
            scope.spawn(|| self.sweeper.run(stop));
            scope.spawn(|| self.summary.run(self.settings.summary_interval, stop));
            scope.spawn(|| refund::run(&self.refunder, self.settings.refund_interval, stop));
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
                    LaneEnd::Lost(e) => {
                        let pause = reconnect.next_delay();
                        log::warn!("broker session ended: {e}; reconnecting in {pause:?}");
                        pause
                    }
                    LaneEnd::Topology(why) => {
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
            self.summary.log();
        });
    }

    /// One connection's life: open it, check the topology, run the lanes
    /// until they stop (on `stop`), one loses the broker, or one is refused
    /// a successor.
    fn session(&self, stop: &AtomicBool) -> Result<(), LaneEnd> {
        let mut conn = broker::connect(&self.amqp_url).map_err(LaneEnd::Lost)?;
        if let Err(e) = self.topology.check(&mut conn, &self.amqp_url) {
            let _ = conn.close();
            return Err(match e {
                BrokerError::TopologyMissing { .. }
                | BrokerError::TopologyMismatch(_)
                | BrokerError::RetryDelaysDiffer { .. } => LaneEnd::Topology(e.to_string()),
                other => LaneEnd::Lost(other),
            });
        }
        let mut lanes = Vec::with_capacity(self.settings.concurrency);
        for _ in 0..self.settings.concurrency {
            let channel = conn
                .consumer_channel(self.settings.prefetch)
                .map_err(LaneEnd::Lost)?;
            let publisher = ConfirmedPublisher::open(
                &mut conn,
                &self.amqp_url,
                broker::DEFAULT_CONFIRM_TIMEOUT,
            )
            .map_err(LaneEnd::Lost)?;
            lanes.push((channel, publisher));
        }
        log::info!(
            "consuming {TIMEOUT_QUEUE} on {} with {} lane(s), prefetch {}",
            self.amqp_url,
            lanes.len(),
            self.settings.prefetch
        );
        let metrics = self.settler.metrics();
        metrics.set_broker_connected(true);
        let broken = AtomicBool::new(false);
        let first_end: Mutex<Option<LaneEnd>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for (channel, publisher) in lanes {
                let (broken, first_end) = (&broken, &first_end);
                scope.spawn(move || {
                    if let Err(end) = self.lane.run(channel, publisher, stop, broken) {
                        broken.store(true, Ordering::Relaxed);
                        let mut slot = first_end
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        // A refusal explains a loss that follows it, not the
                        // other way round.
                        if slot.is_none() || matches!(end, LaneEnd::Topology(_)) {
                            *slot = Some(end);
                        }
                    }
                });
            }
        });
        metrics.set_broker_connected(false);
        let _ = conn.close();
        match first_end
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(end) => Err(end),
            None => Ok(()),
        }
    }
}
