//! The outbox relay: claims unpublished outbox rows, publishes them as
//! persistent delay messages with confirms and the mandatory flag, and marks
//! rows published only after the broker confirmed them (all through
//! `domain::relay_batch`, which holds the claim in one transaction).
//!
//! A nack, a returned message or a lost connection leaves the rows for a
//! later try; a crash between publish and commit publishes a row twice,
//! which the design allows (the worker is idempotent).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use broker::{
    AmqpUrl, BrokerError, Confirmation, ConfirmedPublisher, Connection, Outgoing, TimeoutMessage,
    Topology,
};
use domain::{
    DatabaseUrl, OrderNo, OrderStatus, OutboxMessage, PgConnection, PublishReport, RelayBatch,
};
use service::{sleep_unless_stopped, Backoff};

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub confirm_timeout: Duration,
    /// Back-off after a failure doubles from 200 ms up to this (nominal;
    /// jitter stretches each pause by up to as much again).
    pub max_backoff: Duration,
}

/// Totals since the relay started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub published: u64,
    pub failed: u64,
    pub batches: u64,
}

/// Why one relay step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    // Transparent: the inner error says what failed; wrapping it as a
    // source as well would print the 406 explanation twice in `{:#}`.
    #[error(transparent)]
    Database(#[from] domain::StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

struct Amqp {
    // Field order matters: the publisher's channel closes before the connection.
    publisher: ConfirmedPublisher,
    connection: Connection,
}

/// A relay with its (lazily opened) database and broker connections.
pub struct Relay {
    db_url: DatabaseUrl,
    amqp_url: AmqpUrl,
    topology: Topology,
    settings: Settings,
    db: Option<PgConnection>,
    amqp: Option<Amqp>,
    stats: Stats,
    metrics: service::Metrics,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("db_url", &self.db_url)
            .field("amqp_url", &self.amqp_url)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Relay {
    #[must_use]
    pub fn new(
        db_url: DatabaseUrl,
        amqp_url: AmqpUrl,
        topology: Topology,
        settings: Settings,
    ) -> Self {
        Self {
            db_url,
            amqp_url,
            topology,
            settings,
            db: None,
            amqp: None,
            stats: Stats::default(),
            metrics: service::Metrics::disabled(),
        }
    }

    /// Counts what is published into `metrics`, and reports the broker
    /// connection there.
    #[must_use]
    pub fn with_metrics(mut self, metrics: service::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Connects what is not connected. On (re)connecting to the broker the
    /// topology is declared (idempotent), so the dead-letter exchange exists
    /// before any message can expire into it and a mismatch is reported
    /// before anything is published.
    fn connect(&mut self) -> Result<(), StepError> {
        if self.db.is_none() {
            self.db = Some(domain::connect(&self.db_url)?);
        }
        if self.amqp.is_none() {
            let mut connection = broker::connect(&self.amqp_url)?;
            self.topology.declare(&mut connection, &self.amqp_url)?;
            let publisher = ConfirmedPublisher::open(
                &mut connection,
                &self.amqp_url,
                self.settings.confirm_timeout,
            )?;
            log::info!("relay connected to {}", self.amqp_url);
            self.metrics.set_broker_connected(true);
            self.amqp = Some(Amqp {
                publisher,
                connection,
            });
        }
        Ok(())
    }

    /// Claims, publishes and marks one batch. On a broker failure the broker
    /// connection is dropped (reopened next time); on a database failure the
    /// database connection is.
    pub fn step(&mut self) -> Result<RelayBatch, StepError> {
        self.connect()?;
        let topology = &self.topology;
        let amqp = self.amqp.as_mut().expect("connected above");
        let db = self.db.as_mut().expect("connected above");
        let result = domain::relay_batch(db, self.settings.batch_size, |batch| {
            publish_batch(&mut amqp.publisher, topology, batch)
        });
        match result {
            Ok(Ok(done)) => {
                self.stats.batches += u64::from(done.claimed > 0);
                self.stats.published += done.published as u64;
                self.stats.failed += done.failed as u64;
                self.metrics.relayed(done.published, done.failed);
                if done.failed > 0 {
                    // Returned (no such queue) or nacked: the topology may
                    // have been damaged under us. Reconnecting declares it
                    // again before the next batch.
                    log::warn!(
                        "{} message(s) not accepted by the broker; left in the outbox; \
                         reconnecting to declare the topology again",
                        done.failed
                    );
                    self.drop_amqp();
                }
                Ok(done)
            }
            Ok(Err(broker_error)) => {
                self.drop_amqp();
                Err(broker_error.into())
            }
            Err(db_error) => {
                self.db = None;
                Err(db_error.into())
            }
        }
    }

    fn drop_amqp(&mut self) {
        self.metrics.set_broker_connected(false);
        if let Some(amqp) = self.amqp.take() {
            let _ = amqp.publisher.close();
            let _ = amqp.connection.close();
        }
    }

    /// `--once`: publishes until the outbox is empty, failing on the first
    /// error (the rows stay for the next run). A batch the broker refused
    /// entirely is tried once more after declaring the topology again.
    pub fn drain(&mut self) -> anyhow::Result<Stats> {
        let mut refused_in_a_row = 0;
        loop {
            let done = self
                .step()
                .context("relay failed; unpublished rows stay in the outbox")?;
            if done.claimed == 0 {
                break;
            }
            if done.published == 0 && done.failed > 0 {
                refused_in_a_row += 1;
                if refused_in_a_row >= 2 {
                    self.drop_amqp();
                    anyhow::bail!(
                        "{} message(s) were not accepted by the broker, even after declaring \
                         the topology again, and stay in the outbox",
                        done.failed
                    );
                }
            } else {
                refused_in_a_row = 0;
            }
        }
        self.drop_amqp();
        Ok(self.stats)
    }

    /// Relays until `stop` is raised, then returns after the batch in hand.
    /// Failures are logged and retried with back-off; a topology mismatch
    /// is retried too (slowly), since an operator can fix it while we wait.
    pub fn run(&mut self, stop: &Arc<AtomicBool>) -> Stats {
        // Jittered, so that relays cut off by one broker restart do not all
        // come back on the same schedule.
        let mut backoff = Backoff::new(Duration::from_millis(200), self.settings.max_backoff);
        let mut last_report = Instant::now();
        let mut reported = self.stats;
        while !stop.load(Ordering::Relaxed) {
            match self.step() {
                Ok(done) if done.failed > 0 => {
                    // Refused messages come first in the next batch: pause so
                    // a broker that keeps refusing them is not hammered.
                    sleep_unless_stopped(backoff.next_delay(), stop);
                }
                Ok(done) => {
                    backoff.reset();
                    if done.claimed == 0 {
                        sleep_unless_stopped(self.settings.poll_interval, stop);
                    }
                }
                Err(e) => {
                    let pause = backoff.next_delay();
                    log::warn!("relay step failed, retrying in {pause:?}: {e}");
                    sleep_unless_stopped(pause, stop);
                }
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                let secs = last_report.elapsed().as_secs_f64();
                let n = self.stats.published - reported.published;
                if n > 0 {
                    log::info!(
                        "relayed {n} message(s) in the last {secs:.0} s ({:.0}/s)",
                        n as f64 / secs
                    );
                }
                last_report = Instant::now();
                reported = self.stats;
            }
        }
        self.drop_amqp();
        self.stats
    }
}

fn to_message(m: &OutboxMessage) -> TimeoutMessage {
    TimeoutMessage {
        order_no: m.order_no.clone(),
        created_at: m.created_at,
        deadline: m.deadline,
    }
}

/// Each message addressed by the time left until its deadline, now (see
/// [`Topology::route_remaining`]): a publish delayed by a stuck outbox or a
/// relay that was down goes to a shorter queue, or straight to the worker,
/// and never comes out a whole queue TTL after its deadline.
fn routed<'a>(topology: &'a Topology, messages: &'a [TimeoutMessage]) -> Vec<Outgoing<'a>> {
    let now = chrono::Utc::now();
    messages
        .iter()
        .map(|message| {
            let remaining = (message.deadline - now).to_std().unwrap_or(Duration::ZERO);
            let (exchange, queue) = topology.route_remaining(remaining).target();
            Outgoing {
                exchange,
                queue,
                message,
            }
        })
        .collect()
}

/// Publishes one claimed batch and reports, per outbox id, what the broker
/// said.
fn publish_batch(
    publisher: &mut ConfirmedPublisher,
    topology: &Topology,
    batch: &[OutboxMessage],
) -> Result<PublishReport, BrokerError> {
    let messages: Vec<TimeoutMessage> = batch.iter().map(to_message).collect();
    let outgoing = routed(topology, &messages);
    let outcomes = publisher.publish_all(&outgoing)?;
    let mut report = PublishReport::default();
    for (row, outcome) in batch.iter().zip(outcomes) {
        match outcome {
            Confirmation::Confirmed => report.confirmed.push(row.outbox_id),
            Confirmation::Nacked => report
                .failed
                .push((row.outbox_id, "nacked by the broker".into())),
            Confirmation::Returned(why) => report.failed.push((row.outbox_id, why)),
        }
    }
    Ok(report)
}

/// What `publish ORDER_NO...` did, one line per order.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    pub lines: Vec<String>,
    pub refused: usize,
}

/// Re-emits the delay message of each pending order, with confirms;
/// refuses orders that are not pending (or unknown).
pub fn publish_orders(
    db: &mut PgConnection,
    amqp_url: &AmqpUrl,
    topology: &Topology,
    order_nos: &[OrderNo],
) -> anyhow::Result<PublishOutcome> {
    let mut out = PublishOutcome::default();
    let mut pending = Vec::new();
    for no in order_nos {
        match domain::find_order(db, no)? {
            None => {
                out.lines
                    .push(format!("{no}: no such order; not published"));
                out.refused += 1;
            }
            Some(o) if o.status != OrderStatus::PendingPayment => {
                out.lines.push(format!(
                    "{no}: order is {}, not pending; not published",
                    o.status
                ));
                out.refused += 1;
            }
            Some(o) => pending.push(o),
        }
    }
    if pending.is_empty() {
        return Ok(out);
    }
    let mut connection =
        broker::connect(amqp_url).context("is RabbitMQ running and AMQP_URL right?")?;
    topology
        .declare(&mut connection, amqp_url)
        .context("the topology does not match")?;
    let mut publisher =
        ConfirmedPublisher::open(&mut connection, amqp_url, broker::DEFAULT_CONFIRM_TIMEOUT)?;
    let messages: Vec<TimeoutMessage> = pending
        .iter()
        .map(|o| TimeoutMessage {
            order_no: o.order_no.clone(),
            created_at: o.created_at,
            deadline: o.deadline,
        })
        .collect();
    let outgoing = routed(topology, &messages);
    let outcomes = publisher
        .publish_all(&outgoing)
        .context("publishing failed")?;
    for (item, outcome) in outgoing.iter().zip(outcomes) {
        match outcome {
            Confirmation::Confirmed => out.lines.push(format!(
                "{}: published to {}",
                item.message.order_no,
                item.target()
            )),
            Confirmation::Nacked => {
                out.lines.push(format!(
                    "{}: nacked by the broker; not published",
                    item.message.order_no
                ));
                out.refused += 1;
            }
            Confirmation::Returned(why) => {
                out.lines
                    .push(format!("{}: {why}; not published", item.message.order_no));
                out.refused += 1;
            }
        }
    }
    let _ = publisher.close();
    let _ = connection.close();
    Ok(out)
}
