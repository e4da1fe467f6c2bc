//! The consumer's supervisor: one connection's session of `--worker-concurrency`
//! lanes (each a thread with its own channel, since amiquip's `Channel` is
//! `Send`, not `Sync`; the lane itself is in [`crate::lane`]), reconnecting
//! with jittered back-off when the connection or a consumer is lost, plus
//! the summary loop.
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
use service::{sleep_unless_stopped, Backoff};

use crate::dispose::{dispose, Disposition};
use crate::settle::{Settlement, Settler};
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
    /// How often due refunds are claimed and acted on.
    pub refund_interval: Duration,
}

/// Waits until the broker answers, then checks the topology once: what the
/// worker does at start. A broker that cannot be reached (down, restarting,
/// the vhost not there yet) is an outage: it is retried with jittered
/// back-off, logged at WARN, as the relay does, while readiness stays false.
/// A topology that is missing or differs is configuration: returned as the
/// error (exit 2). `Ok(false)`: `stop` was raised while waiting.
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

/// The settling worker: consumer lanes, the sweep and the summary.
#[derive(Debug)]
pub struct Worker {
    pub(crate) settler: Settler,
    pub(crate) topology: Topology,
    pub(crate) amqp_url: AmqpUrl,
    pub(crate) settings: ConsumerSettings,
    pub(crate) stats: Arc<Stats>,
}

/// Why a consumer session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// The broker went away (or a consumer was cancelled): reconnect.
    Lost(BrokerError),
    /// The topology is missing, differs, or refused a successor: do not
    /// consume until a check passes.
    Topology(String),
}

impl Worker {
    #[must_use]
    pub fn new(
        settler: Settler,
        topology: Topology,
        amqp_url: AmqpUrl,
        settings: ConsumerSettings,
    ) -> Self {
        let metrics = settler.metrics();
        metrics.init_retry_delays(crate::dispose::ladder(&topology).steps());
        metrics.init_parked_reasons(&crate::dispose::reason::PARKED);
        metrics.init_parked_reasons(&domain::Anomaly::ALL.map(domain::Anomaly::as_str));
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

    /// The worker's outcome counters (shared: they keep counting while it runs).
    #[must_use]
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Runs the consumer, the sweep and the summary until `stop` is raised,
    /// then lets every lane finish the message in hand, gives prefetched
    /// messages back, and closes the connection.
    pub fn run(&self, stop: &AtomicBool) {
        std::thread::scope(|scope| {
            scope.spawn(|| self.sweep_loop(stop));
            scope.spawn(|| self.summary_loop(stop));
            scope.spawn(|| self.refund_loop(stop));
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
            self.log_summary();
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
                BrokerError::TopologyMissing { .. }
                | BrokerError::TopologyMismatch(_)
                | BrokerError::RetryDelaysDiffer { .. } => SessionEnd::Topology(e.to_string()),
                other => SessionEnd::Lost(other),
            });
        }
        let mut lanes = Vec::with_capacity(self.settings.concurrency);
        for _ in 0..self.settings.concurrency {
            let channel = conn
                .lane(self.settings.prefetch)
                .map_err(SessionEnd::Lost)?;
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
        let metrics = self.settler.metrics();
        metrics.set_broker_connected(true);
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
            self.log_summary();
        }
    }

    /// The summary line of the window, with how the local closes so far
    /// were grouped into statements (`domain::close_batch`).
    fn log_summary(&self) {
        if let Some(summary) = self.stats.take_summary() {
            let (statements, closes) = self.settler.close_batches();
            log::info!("{summary}; {closes} local closes so far, in {statements} statements");
        }
    }
}
