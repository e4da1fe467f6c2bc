//! The operator's facts, read from the database and the broker in one go:
//! queue depths, orders by status, the outbox backlog and its age, payments
//! after close, refunds by status, what needs a human. `order-producer
//! status` prints them (as text or `--json`) and the metrics gauges are set
//! from them ([`crate::metrics::Metrics::set_snapshot`]), so the two cannot
//! disagree. Read-only.

use std::collections::BTreeMap;

use broker::{AmqpUrl, Topology};
use chrono::{DateTime, NaiveDate, Utc};
use domain::{OrderStatus, PgConnection, RefundStatus, StoreError};
use serde::Serialize;

/// What the system looks like at `taken_at`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    /// The topology's queues (empty when the broker could not be read).
    pub queues: Vec<QueueState>,
    /// Why the broker could not be read, if it could not.
    pub broker_error: Option<String>,
    /// Every status, zeros included.
    pub orders: BTreeMap<&'static str, i64>,
    pub outbox: Outbox,
    pub overdue: Overdue,
    /// Payments recorded after their order had been closed (each one
    /// refunded automatically).
    pub payments_after_close: i64,
    /// Every refund status, zeros included.
    pub refunds: BTreeMap<&'static str, i64>,
    pub needs_human: NeedsHuman,
    pub reconciliation: Reconciliation,
}

/// Reconciliation against WeChat Pay's trade bill
/// (`order-timeout-worker reconcile`).
#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    /// The newest Beijing day reconciled (or found without trades).
    pub last_day: Option<NaiveDate>,
    /// When that day ended (00:00 Beijing time the day after): the metric
    /// `order_timeout_reconcile_last_success_timestamp`. At noon Beijing
    /// time it is 36 hours old when yesterday is not reconciled.
    pub last_day_end: Option<DateTime<Utc>>,
    /// The latest run, when it failed: which day, when, why.
    pub last_failure: Option<RunFailure>,
    /// Open discrepancies by kind, zeros included.
    pub open_discrepancies: BTreeMap<&'static str, i64>,
    /// Bill rows of every run so far: matched, acted on, discrepancy.
    pub rows: BTreeMap<&'static str, i64>,
}

/// A run that failed.
#[derive(Debug, Clone, Serialize)]
pub struct RunFailure {
    pub date: NaiveDate,
    pub at: DateTime<Utc>,
    pub error: String,
}

impl Reconciliation {
    fn gather(db: &mut PgConnection) -> Result<Self, StoreError> {
        use domain::reconcile as r;
        let last_day = r::last_reconciled(db)?.map(|run| run.bill_date);
        let last_failure = r::last_run(db)?.and_then(|run| {
            Some(RunFailure {
                date: run.bill_date,
                at: run.finished_at?,
                error: run.error?,
            })
        });
        let (matched, acted, discrepancy) = r::row_totals(db)?;
        Ok(Self {
            last_day,
            last_day_end: last_day.map(|d| r::day_bounds(d).1),
            last_failure,
            open_discrepancies: r::open_discrepancy_counts(db)?
                .into_iter()
                .map(|(k, n)| (k.as_str(), n))
                .collect(),
            rows: [
                ("matched", matched),
                ("acted", acted),
                ("discrepancy", discrepancy),
            ]
            .into_iter()
            .collect(),
        })
    }

    /// Open discrepancies of every kind.
    #[must_use]
    pub fn open(&self) -> i64 {
        self.open_discrepancies.values().sum()
    }
}

/// One queue of the topology.
#[derive(Debug, Clone, Serialize)]
pub struct QueueState {
    pub name: String,
    /// False when the queue does not exist (run `order-producer declare`).
    pub exists: bool,
    /// Messages ready for delivery (0 when missing).
    pub messages: u32,
    pub consumers: u32,
}

/// The unpublished outbox.
#[derive(Debug, Clone, Serialize)]
pub struct Outbox {
    pub backlog: i64,
    /// When the oldest unpublished row was written.
    pub oldest: Option<DateTime<Utc>>,
    /// Its age at `taken_at`, in seconds; 0 when the outbox is empty.
    pub oldest_age_seconds: f64,
}

/// Pending orders past their deadline (anomalies aside): settled within a
/// second or two normally, so many or an old one means settling stalls.
#[derive(Debug, Clone, Serialize)]
pub struct Overdue {
    pub orders: i64,
    /// The earliest deadline among them.
    pub oldest_deadline: Option<DateTime<Utc>>,
    /// How long ago that deadline was, in seconds; 0 when none is overdue.
    pub oldest_seconds: f64,
}

/// What waits for a person.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NeedsHuman {
    /// Orders whose WeChat Pay answer did not match them (an anomaly).
    pub orders: i64,
    /// Refunds parked for a human (abnormal, refused, ...).
    pub refunds: i64,
}

impl Snapshot {
    /// Reads the database part, and the queues through `broker` when given
    /// (one passive declare per queue: nothing is created). A broker error
    /// is kept in [`Snapshot::queues`]; a database error is returned.
    pub fn gather(
        db: &mut PgConnection,
        broker: Option<(&mut broker::Connection, &AmqpUrl)>,
        topology: &Topology,
    ) -> Result<Self, StoreError> {
        let queues = match broker {
            Some((conn, url)) => topology
                .depths(conn, url)
                .map(|depths| {
                    depths
                        .into_iter()
                        .map(|d| {
                            let (messages, consumers) = d.state.unwrap_or((0, 0));
                            QueueState {
                                name: d.name,
                                exists: d.state.is_some(),
                                messages,
                                consumers,
                            }
                        })
                        .collect()
                })
                .map_err(|e| e.to_string()),
            None => Err("not read".to_owned()),
        };
        Self::gather_database(db, queues)
    }

    fn gather_database(
        db: &mut PgConnection,
        queues: Result<Vec<QueueState>, String>,
    ) -> Result<Self, StoreError> {
        let (queues, broker_error) = match queues {
            Ok(q) => (q, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let taken_at = Utc::now();
        let orders = domain::count_by_status(db)?
            .into_iter()
            .map(|(s, n)| (s.as_str(), n))
            .collect();
        let mut refunds: BTreeMap<&'static str, i64> =
            RefundStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for (s, n) in domain::refund_counts(db)? {
            refunds.insert(s.as_str(), n);
        }
        let (backlog, oldest) = domain::outbox_backlog(db)?;
        let (overdue, oldest_deadline) = domain::overdue_pending(db, taken_at)?;
        let age = |t: DateTime<Utc>| (taken_at - t).num_milliseconds().max(0) as f64 / 1000.0;
        let oldest_age_seconds = oldest.map_or(0.0, age);
        Ok(Self {
            taken_at,
            queues,
            broker_error,
            orders,
            outbox: Outbox {
                backlog,
                oldest,
                oldest_age_seconds,
            },
            overdue: Overdue {
                orders: overdue,
                oldest_deadline,
                oldest_seconds: oldest_deadline.map_or(0.0, age),
            },
            payments_after_close: domain::paid_after_close_count(db)?,
            refunds,
            needs_human: NeedsHuman {
                orders: domain::needs_human_count(db)?,
                refunds: domain::refunds_needing_human_count(db)?,
            },
            reconciliation: Reconciliation::gather(db)?,
        })
    }

    /// Orders with this status.
    #[must_use]
    pub fn orders_with(&self, status: OrderStatus) -> i64 {
        self.orders.get(status.as_str()).copied().unwrap_or(0)
    }
}
