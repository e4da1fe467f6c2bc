//! The database and broker gauges (orders by status, refunds, what needs a
//! human, the outbox backlog and its age, queue depths), read by one
//! process only: every process with metrics on competes for a PostgreSQL
//! advisory lock ([`domain::db::try_collector_lock`]); the holder reads a
//! [`Snapshot`] every interval and sets the gauges, the others export none
//! of them. When the holder dies its lock dies with its connection, and the
//! next process to try takes over within one interval.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::{AmqpUrl, Topology};
use domain::{DatabaseUrl, PgConnection};

use crate::metrics::Metrics;
use crate::shutdown::sleep_unless_stopped;
use crate::snapshot::Snapshot;

/// Where the collector reads from and how often.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseUrl,
    pub amqp: AmqpUrl,
    pub topology: Topology,
    pub interval: Duration,
}

/// Runs on a thread of its own until `stop` is raised. Does nothing when
/// `metrics` is disabled.
pub fn spawn(
    metrics: Metrics,
    settings: Settings,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
    if !metrics.is_enabled() {
        return Ok(None);
    }
    std::thread::Builder::new()
        .name("metrics-collector".into())
        .spawn(move || run(&metrics, &settings, &stop))
        .map(Some)
}

fn run(metrics: &Metrics, settings: &Settings, stop: &AtomicBool) {
    // The connection that holds the lock; dropping it releases the lock.
    let mut holder: Option<PgConnection> = None;
    let mut broker: Option<broker::Connection> = None;
    while !stop.load(Ordering::Relaxed) {
        if holder.is_none() {
            holder = take_lock(&settings.database);
            if holder.is_some() {
                log::info!(
                    "reading the database and broker gauges for the metrics (every {:?})",
                    settings.interval
                );
            } else {
                metrics.clear_snapshot();
            }
        }
        if let Some(db) = holder.as_mut() {
            if broker.is_none() {
                broker = broker::connect(&settings.amqp)
                    .map_err(|e| log::debug!("metrics collector: broker: {e}"))
                    .ok();
            }
            let result = Snapshot::gather(
                db,
                broker.as_mut().map(|c| (c, &settings.amqp)),
                &settings.topology,
            );
            match result {
                Ok(snapshot) => {
                    if let Some(e) = &snapshot.broker_error {
                        log::debug!("metrics collector: queue depths unavailable: {e}");
                        if let Some(c) = broker.take() {
                            let _ = c.close();
                        }
                    }
                    metrics.set_snapshot(&snapshot);
                }
                Err(e) => {
                    log::warn!("metrics collector: cannot read the database gauges: {e}");
                    holder = None;
                    metrics.clear_snapshot();
                }
            }
        }
        sleep_unless_stopped(settings.interval, stop);
    }
    if let Some(c) = broker {
        let _ = c.close();
    }
}

/// A connection holding the collector lock, or `None` (another process
/// holds it, or the database is away).
fn take_lock(url: &DatabaseUrl) -> Option<PgConnection> {
    let mut conn = domain::connect(url)
        .map_err(|e| log::debug!("metrics collector: {e}"))
        .ok()?;
    match domain::db::try_collector_lock(&mut conn) {
        Ok(true) => Some(conn),
        Ok(false) => None,
        Err(e) => {
            log::debug!("metrics collector: {e}");
            None
        }
    }
}
