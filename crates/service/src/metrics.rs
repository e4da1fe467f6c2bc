//! The Prometheus metrics of every long-running process (worker, relay,
//! `serve`), on the Prometheus project's own client (`prometheus-client`).
//!
//! [`Metrics`] is a cheap handle: clone it into every thread. A disabled
//! handle (no `--metrics-listen`) records nothing at all, so a process that
//! is not scraped pays nothing but a branch. Each process registers every
//! family, so one name table ([`METRIC_NAMES`] and docs/metrics.md) serves them
//! all; a family a process never touches simply has no samples.
//!
//! Counters and histograms are per process (sum them in queries); the gauges
//! read from the database and the broker ([`Metrics::set_snapshot`]) come
//! from the one process that holds the collector lock
//! ([`crate::collector`]), so they are never double counted.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use payment_client::{Call, CallObserver, CallResult};
use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::settle::{Outcome, Trigger};
use crate::snapshot::Snapshot;

/// Every name the processes export, as Prometheus sees it (counters with
/// `_total`; histograms as their base name, which Prometheus expands to
/// `_bucket`, `_sum` and `_count`). A test checks this list against the
/// encoder's output, and the dashboard and alert rules against this list.
pub const METRIC_NAMES: &[&str] = &[
    "order_timeout_build_info",
    "order_timeout_settlements_total",
    "order_timeout_settlement_lag_seconds",
    "order_timeout_wechatpay_requests_total",
    "order_timeout_wechatpay_request_duration_seconds",
    "order_timeout_retries_total",
    "order_timeout_parked_total",
    "order_timeout_refund_steps_total",
    "order_timeout_relay_published_total",
    "order_timeout_relay_refused_total",
    "order_timeout_broker_connected",
    "order_timeout_collector",
    "order_timeout_snapshot_timestamp_seconds",
    "order_timeout_outbox_backlog",
    "order_timeout_outbox_oldest_age_seconds",
    "order_timeout_overdue_orders",
    "order_timeout_overdue_oldest_seconds",
    "order_timeout_queue_messages",
    "order_timeout_queue_consumers",
    "order_timeout_orders",
    "order_timeout_payments_after_close",
    "order_timeout_refunds",
    "order_timeout_needs_human",
    "order_timeout_reconcile_last_success_timestamp",
    "order_timeout_reconcile_discrepancies",
    "order_timeout_reconcile_rows_total",
    "order_timeout_http_requests_total",
    "order_timeout_http_request_duration_seconds",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SettlementLabels {
    outcome: Outcome,
    trigger: Trigger,
}

// The label values are the enums' own words. Written out rather than
// derived: prometheus-client's derive writes the variant's name as it is
// spelt in Rust (`PaidAfterClose`), and the labels are snake case.
impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Trigger {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
    result: Cow<'static, str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallOnly {
    call: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DelayLabel {
    delay: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Cow<'static, str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    action: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: Cow<'static, str>,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Cow<'static, str>,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The empty label set of a gauge that must be able to have no series at
/// all. A plain `Gauge` always writes a sample, so a process that does not
/// hold the collector lock would export 0 beside the holder's real value;
/// as a family of one unlabelled series it exports nothing until set.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Unlabelled;

impl EncodeLabelSet for Unlabelled {
    fn encode(
        &self,
        _: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

/// A snapshot gauge: one unlabelled series while this process holds the
/// collector lock, none otherwise.
type SnapshotGauge<G = Gauge> = Family<Unlabelled, G>;

/// Seconds from a deadline to its settlement: a settlement is due at once,
/// and a lag of an hour is an outage.
const LAG_BUCKETS: [f64; 16] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0,
];
/// Seconds of one request (WeChat Pay's or ours).
const REQUEST_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn lag_histogram() -> Histogram {
    Histogram::new(LAG_BUCKETS)
}

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

struct Inner {
    registry: Registry,
    settlements: Family<SettlementLabels, Counter>,
    lag: Histogram,
    wechatpay_requests: Family<CallLabels, Counter>,
    wechatpay_duration: HistogramFamily<CallOnly>,
    retries: Family<DelayLabel, Counter>,
    parked: Family<ReasonLabel, Counter>,
    refund_steps: Family<StepLabels, Counter>,
    relay_published: Counter,
    relay_refused: Counter,
    broker_connected: Gauge,
    collector: Gauge,
    snapshot_timestamp: SnapshotGauge<FloatGauge>,
    outbox_backlog: SnapshotGauge,
    outbox_oldest_age: SnapshotGauge<FloatGauge>,
    overdue_orders: SnapshotGauge,
    overdue_oldest: SnapshotGauge<FloatGauge>,
    queue_messages: Family<QueueLabel, Gauge>,
    queue_consumers: Family<QueueLabel, Gauge>,
    orders: Family<StatusLabel, Gauge>,
    payments_after_close: SnapshotGauge,
    refunds: Family<StatusLabel, Gauge>,
    needs_human: Family<KindLabel, Gauge>,
    reconcile_last_success: SnapshotGauge,
    reconcile_discrepancies: Family<KindLabel, Gauge>,
    reconcile_rows: Family<ResultLabel, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabel>,
}

impl Inner {
    /// The counters and histograms of the processes' own events.
    fn register_counters(&self, r: &mut Registry) {
        r.register(
            "settlements",
            "Settlement attempts by outcome and trigger (message, recheck, sweep)",
            self.settlements.clone(),
        );
        r.register(
            "settlement_lag_seconds",
            "From an order's payment deadline to its settlement (closed or paid by the worker)",
            self.lag.clone(),
        );
        r.register(
                "wechatpay_requests",
                "Requests sent to WeChat Pay by call and result (2xx, WeChat Pay's error code, the status class, or timeout, connect_error, transport_error, unverified)",
                self.wechatpay_requests.clone(),
            );
        r.register(
            "wechatpay_request_duration_seconds",
            "Duration of requests to WeChat Pay, by call, signing and verification included",
            self.wechatpay_duration.clone(),
        );
        r.register(
            "retries",
            "Settlement attempts retried later (payment state unknown) through a retry queue, by the queue's delay (messages that came before their deadline wait there too, counted as settlements with outcome not_yet_due)",
            self.retries.clone(),
        );
        r.register(
            "parked",
            "Messages parked in queue.ordertimeout.parked, by reason",
            self.parked.clone(),
        );
        r.register(
                "refund_steps",
                "Refund turns by action (request, query) and result (processing, succeeded, closed, abnormal, retry, parked)",
                self.refund_steps.clone(),
            );
        r.register(
            "relay_published",
            "Delay messages the relay published and the broker confirmed",
            self.relay_published.clone(),
        );
        r.register(
                "relay_refused",
                "Delay messages the broker did not accept (nacked or returned); they stay in the outbox",
                self.relay_refused.clone(),
            );
    }

    /// The gauges (process state, and what the collector reads).
    fn register_gauges(&self, r: &mut Registry) {
        r.register(
            "broker_connected",
            "1 while this process holds a working connection to RabbitMQ",
            self.broker_connected.clone(),
        );
        r.register(
            "collector",
            "1 in the one process that reads the database and broker gauges",
            self.collector.clone(),
        );
        r.register(
            "snapshot_timestamp_seconds",
            "When the database and broker gauges were last read (Unix time)",
            self.snapshot_timestamp.clone(),
        );
        r.register(
            "outbox_backlog",
            "Outbox rows not yet published",
            self.outbox_backlog.clone(),
        );
        r.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row (0 when empty)",
            self.outbox_oldest_age.clone(),
        );
        r.register(
            "overdue_orders",
            "Pending orders past their deadline, anomalies aside (settled within seconds normally)",
            self.overdue_orders.clone(),
        );
        r.register(
            "overdue_oldest_seconds",
            "How long ago the earliest deadline among the overdue pending orders passed (0 when none)",
            self.overdue_oldest.clone(),
        );
        r.register(
            "queue_messages",
            "Messages ready in each queue of the topology (read from the broker)",
            self.queue_messages.clone(),
        );
        r.register(
            "queue_consumers",
            "Consumers of each queue of the topology (read from the broker)",
            self.queue_consumers.clone(),
        );
        r.register("orders", "Orders by status", self.orders.clone());
        r.register(
            "payments_after_close",
            "Payments recorded after their order was closed (each refunded automatically)",
            self.payments_after_close.clone(),
        );
        r.register("refunds", "Refunds by status", self.refunds.clone());
        r.register(
            "needs_human",
            "What waits for a person: orders with an anomaly, refunds parked",
            self.needs_human.clone(),
        );
        r.register(
            "reconcile_last_success_timestamp",
            "End (00:00 Beijing time of the day after) of the newest day reconciled against WeChat Pay's trade bill, Unix time; 0 when none",
            self.reconcile_last_success.clone(),
        );
        r.register(
            "reconcile_discrepancies",
            "Open discrepancies between WeChat Pay's trade bills and the store, by kind (each waits for a human: order-producer cases)",
            self.reconcile_discrepancies.clone(),
        );
        r.register(
            "reconcile_rows",
            "Trade bill rows reconciled, by result (matched, acted, discrepancy), over every run in the database",
            self.reconcile_rows.clone(),
        );
        r.register(
            "http_requests",
            "Requests to the front door by route template and status",
            self.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Duration of requests to the front door by route template",
            self.http_duration.clone(),
        );
    }
}

/// The metrics of one process; a disabled handle records nothing.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Inner>>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.0.is_some())
            .finish()
    }
}

impl Metrics {
    /// A handle that records nothing (metrics off).
    #[must_use]
    pub fn disabled() -> Self {
        Self(None)
    }

    /// Every family registered; `process` (`worker`, `relay`, `serve`) goes
    /// into `order_timeout_build_info` with the version.
    #[must_use]
    pub fn new(process: &str) -> Self {
        let mut registry = Registry::with_prefix("order_timeout");
        registry.register(
            "build",
            "The process: version and kind (worker, relay, serve); always 1",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("process", process.to_owned()),
            ]),
        );
        let inner = Inner {
            settlements: Family::default(),
            lag: lag_histogram(),
            wechatpay_requests: Family::default(),
            wechatpay_duration: Family::new_with_constructor(request_histogram),
            retries: Family::default(),
            parked: Family::default(),
            refund_steps: Family::default(),
            relay_published: Counter::default(),
            relay_refused: Counter::default(),
            broker_connected: Gauge::default(),
            collector: Gauge::default(),
            snapshot_timestamp: Family::default(),
            outbox_backlog: Family::default(),
            outbox_oldest_age: Family::default(),
            overdue_orders: Family::default(),
            overdue_oldest: Family::default(),
            queue_messages: Family::default(),
            queue_consumers: Family::default(),
            orders: Family::default(),
            payments_after_close: Family::default(),
            refunds: Family::default(),
            needs_human: Family::default(),
            reconcile_last_success: Family::default(),
            reconcile_discrepancies: Family::default(),
            reconcile_rows: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(request_histogram),
            registry: Registry::default(),
        };
        inner.register_counters(&mut registry);
        inner.register_gauges(&mut registry);
        let metrics = Self(Some(Arc::new(Inner { registry, ..inner })));
        metrics.pre_register();
        metrics
    }

    /// Series that should read 0 before their first event (so `increase()`
    /// sees the first one).
    fn pre_register(&self) {
        let Some(m) = &self.0 else { return };
        for outcome in Outcome::ALL {
            for trigger in Trigger::ALL {
                let _ = m
                    .settlements
                    .get_or_create(&SettlementLabels { outcome, trigger });
            }
        }
    }

    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The text exposition (Prometheus text format 0.0.4); empty when
    /// disabled.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Some(m) = &self.0 {
            // Writing to a String cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry);
        }
        out
    }

    /// One settlement attempt.
    pub fn settlement(&self, outcome: Outcome, trigger: Trigger) {
        if let Some(m) = &self.0 {
            m.settlements
                .get_or_create(&SettlementLabels { outcome, trigger })
                .inc();
        }
    }

    /// Settlement attempts counted so far with this outcome and trigger (0
    /// when disabled): what the worker's summary line reads.
    #[must_use]
    pub fn settlements(&self, outcome: Outcome, trigger: Trigger) -> u64 {
        self.0.as_ref().map_or(0, |m| {
            m.settlements
                .get(&SettlementLabels { outcome, trigger })
                .map_or(0, |c| c.get())
        })
    }

    /// An order settled (closed or paid by the worker) this long after its
    /// deadline (negative lags count as 0).
    pub fn settlement_lag(&self, lag: chrono::TimeDelta) {
        if let Some(m) = &self.0 {
            m.lag.observe(lag.num_milliseconds().max(0) as f64 / 1000.0);
        }
    }

    /// A message sent to the retry queue of this delay.
    pub fn retry(&self, delay: Duration) {
        if let Some(m) = &self.0 {
            m.retries
                .get_or_create(&DelayLabel {
                    delay: humantime::format_duration(delay).to_string(),
                })
                .inc();
        }
    }

    /// Messages sent to the retry queue of this delay so far (0 when
    /// disabled).
    #[must_use]
    pub fn retries(&self, delay: Duration) -> u64 {
        self.0.as_ref().map_or(0, |m| {
            m.retries
                .get(&DelayLabel {
                    delay: humantime::format_duration(delay).to_string(),
                })
                .map_or(0, |c| c.get())
        })
    }

    /// Makes the retry series of these delays read 0 from the start.
    pub fn init_retry_delays(&self, delays: &[Duration]) {
        if let Some(m) = &self.0 {
            for d in delays {
                let _ = m.retries.get_or_create(&DelayLabel {
                    delay: humantime::format_duration(*d).to_string(),
                });
            }
        }
    }

    /// A message parked, with its reason code.
    pub fn parked(&self, reason: &str) {
        if let Some(m) = &self.0 {
            m.parked
                .get_or_create(&ReasonLabel {
                    reason: Cow::Owned(reason.to_owned()),
                })
                .inc();
        }
    }

    /// Messages parked for this reason so far (0 when disabled).
    #[must_use]
    pub fn parked_for(&self, reason: &str) -> u64 {
        self.0.as_ref().map_or(0, |m| {
            m.parked
                .get(&ReasonLabel {
                    reason: Cow::Owned(reason.to_owned()),
                })
                .map_or(0, |c| c.get())
        })
    }

    /// Makes the parked series of these reasons read 0 from the start.
    pub fn init_parked_reasons(&self, reasons: &[&'static str]) {
        if let Some(m) = &self.0 {
            for r in reasons {
                let _ = m.parked.get_or_create(&ReasonLabel {
                    reason: Cow::Borrowed(r),
                });
            }
        }
    }

    /// One turn of a refund: `action` `request` or `query`; `result`
    /// `processing`, `succeeded`, `closed`, `abnormal`, `retry` or `parked`.
    pub fn refund_step(&self, action: &'static str, result: &'static str) {
        if let Some(m) = &self.0 {
            m.refund_steps
                .get_or_create(&StepLabels { action, result })
                .inc();
        }
    }

    /// Messages the relay published (confirmed) and those the broker refused.
    pub fn relayed(&self, published: usize, refused: usize) {
        if let Some(m) = &self.0 {
            m.relay_published.inc_by(published as u64);
            m.relay_refused.inc_by(refused as u64);
        }
    }

    /// Whether this process holds a working broker connection now.
    pub fn set_broker_connected(&self, up: bool) {
        if let Some(m) = &self.0 {
            m.broker_connected.set(i64::from(up));
        }
    }

    /// What [`Metrics::set_broker_connected`] said last.
    #[must_use]
    pub fn broker_connected(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|m| m.broker_connected.get() == 1)
    }

    /// One request to the front door: its route template (`unmatched` for
    /// none), status and duration.
    pub fn http_request(&self, route: Cow<'static, str>, status: u16, elapsed: Duration) {
        if let Some(m) = &self.0 {
            m.http_duration
                .get_or_create(&RouteLabel {
                    route: route.clone(),
                })
                .observe(elapsed.as_secs_f64());
            m.http_requests
                .get_or_create(&HttpLabels { route, status })
                .inc();
        }
    }

    /// Sets the database and broker gauges from `snapshot` (this process
    /// holds the collector lock).
    pub fn set_snapshot(&self, snapshot: &Snapshot) {
        let Some(m) = &self.0 else { return };
        m.collector.set(1);
        m.snapshot_timestamp
            .get_or_create(&Unlabelled)
            .set(snapshot.taken_at.timestamp_millis() as f64 / 1000.0);
        m.outbox_backlog
            .get_or_create(&Unlabelled)
            .set(snapshot.outbox.backlog);
        m.outbox_oldest_age
            .get_or_create(&Unlabelled)
            .set(snapshot.outbox.oldest_age_seconds);
        m.overdue_orders
            .get_or_create(&Unlabelled)
            .set(snapshot.overdue.orders);
        m.overdue_oldest
            .get_or_create(&Unlabelled)
            .set(snapshot.overdue.oldest_seconds);
        if snapshot.broker_error.is_some() {
            // Unknown now: no series rather than stale ones.
            m.queue_messages.clear();
            m.queue_consumers.clear();
        } else {
            // Set in place (a scrape never sees the series missing); a
            // queue that does not exist has none.
            for q in &snapshot.queues {
                let label = QueueLabel {
                    queue: q.name.clone(),
                };
                if q.exists {
                    m.queue_messages
                        .get_or_create(&label)
                        .set(i64::from(q.messages));
                    m.queue_consumers
                        .get_or_create(&label)
                        .set(i64::from(q.consumers));
                } else {
                    m.queue_messages.remove(&label);
                    m.queue_consumers.remove(&label);
                }
            }
        }
        for (status, n) in &snapshot.orders {
            m.orders.get_or_create(&StatusLabel { status }).set(*n);
        }
        m.payments_after_close
            .get_or_create(&Unlabelled)
            .set(snapshot.payments_after_close);
        for (status, n) in &snapshot.refunds {
            m.refunds.get_or_create(&StatusLabel { status }).set(*n);
        }
        m.needs_human
            .get_or_create(&KindLabel { kind: "order" })
            .set(snapshot.needs_human.orders);
        m.needs_human
            .get_or_create(&KindLabel { kind: "refund" })
            .set(snapshot.needs_human.refunds);
        let rec = &snapshot.reconciliation;
        m.reconcile_last_success
            .get_or_create(&Unlabelled)
            .set(rec.last_day_end.map_or(0, |t| t.timestamp()));
        for (kind, n) in &rec.open_discrepancies {
            m.reconcile_discrepancies
                .get_or_create(&KindLabel { kind })
                .set(*n);
        }
        // Totals read from the database: the counter moves up to them.
        for (result, n) in &rec.rows {
            let c = m.reconcile_rows.get_or_create(&ResultLabel { result });
            let total = (*n).max(0) as u64;
            if total > c.get() {
                c.inc_by(total - c.get());
            }
        }
    }

    /// Drops the database and broker gauges: another process holds the
    /// collector lock now (or none can read them), and neither stale values
    /// nor zeros may stand beside its fresh ones: no series at all.
    pub fn clear_snapshot(&self) {
        let Some(m) = &self.0 else { return };
        m.collector.set(0);
        m.snapshot_timestamp.clear();
        m.outbox_backlog.clear();
        m.outbox_oldest_age.clear();
        m.overdue_orders.clear();
        m.overdue_oldest.clear();
        m.queue_messages.clear();
        m.queue_consumers.clear();
        m.orders.clear();
        m.payments_after_close.clear();
        m.refunds.clear();
        m.needs_human.clear();
        m.reconcile_last_success.clear();
        m.reconcile_discrepancies.clear();
        m.reconcile_rows.clear();
    }
}

impl CallObserver for Metrics {
    fn observe(&self, call: Call, result: &CallResult, elapsed: Duration) {
        if let Some(m) = &self.0 {
            m.wechatpay_duration
                .get_or_create(&CallOnly {
                    call: call.as_str(),
                })
                .observe(elapsed.as_secs_f64());
            m.wechatpay_requests
                .get_or_create(&CallLabels {
                    call: call.as_str(),
                    result: result.label(),
                })
                .inc();
        }
    }
}

/// The sample names an exposition carries, from its `# TYPE` lines
/// (histograms under their base name). For the tests that check the
/// dashboard and alert rules against what the code exports.
#[must_use]
pub fn type_names(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot with `queue.ordertimeout` (3 ready, 1 consumer when it
    /// exists) and nothing else.
    fn snapshot_of_one_queue(exists: bool) -> Snapshot {
        Snapshot {
            taken_at: chrono::Utc::now(),
            queues: vec![crate::snapshot::QueueState {
                name: "queue.ordertimeout".into(),
                exists,
                messages: if exists { 3 } else { 0 },
                consumers: u32::from(exists),
            }],
            broker_error: None,
            orders: std::collections::BTreeMap::new(),
            outbox: crate::snapshot::Outbox {
                backlog: 0,
                oldest: None,
                oldest_age_seconds: 0.0,
            },
            overdue: crate::snapshot::Overdue {
                orders: 0,
                oldest_deadline: None,
                oldest_seconds: 0.0,
            },
            payments_after_close: 0,
            refunds: std::collections::BTreeMap::new(),
            needs_human: crate::snapshot::NeedsHuman {
                orders: 0,
                refunds: 0,
            },
            reconciliation: crate::snapshot::Reconciliation {
                last_day: None,
                last_day_end: None,
                last_failure: None,
                open_discrepancies: [("unknown_order", 0)].into_iter().collect(),
                rows: [("matched", 0)].into_iter().collect(),
            },
        }
    }

    /// Records one sample in every family.
    fn exercise_all(m: &Metrics) {
        m.settlement(Outcome::Closed, Trigger::Message);
        m.settlement_lag(chrono::TimeDelta::seconds(1));
        m.observe(Call::Close, &CallResult::Timeout, Duration::from_millis(1));
        m.retry(Duration::from_secs(5));
        m.parked("poison");
        m.refund_step("request", "processing");
        m.relayed(1, 0);
        m.set_broker_connected(true);
        let mut snapshot = snapshot_of_one_queue(true);
        snapshot.orders = [("paid", 1)].into_iter().collect();
        snapshot.refunds = [("succeeded", 1)].into_iter().collect();
        m.set_snapshot(&snapshot);
        m.http_request(Cow::Borrowed("/healthz"), 200, Duration::from_millis(1));
    }

    #[test]
    fn reconciliation_gauges_and_row_totals_follow_the_database() {
        let m = Metrics::new("test");
        let mut snapshot = snapshot_of_one_queue(true);
        snapshot.reconciliation.last_day_end = Some(
            chrono::DateTime::parse_from_rfc3339("2026-12-06T00:00:00+08:00")
                .unwrap()
                .with_timezone(&chrono::Utc),
        );
        snapshot.reconciliation.open_discrepancies = [("unknown_order", 2), ("payment_differs", 0)]
            .into_iter()
            .collect();
        snapshot.reconciliation.rows = [("matched", 10), ("acted", 3)].into_iter().collect();
        m.set_snapshot(&snapshot);
        let text = m.encode();
        for line in [
            "order_timeout_reconcile_last_success_timestamp 1796486400",
            r#"order_timeout_reconcile_discrepancies{kind="unknown_order"} 2"#,
            r#"order_timeout_reconcile_discrepancies{kind="payment_differs"} 0"#,
            r#"order_timeout_reconcile_rows_total{result="matched"} 10"#,
            r#"order_timeout_reconcile_rows_total{result="acted"} 3"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        // Totals only move up, to the database's figure.
        snapshot.reconciliation.rows = [("matched", 12), ("acted", 3)].into_iter().collect();
        m.set_snapshot(&snapshot);
        assert!(m
            .encode()
            .contains(r#"order_timeout_reconcile_rows_total{result="matched"} 12"#));
        m.clear_snapshot();
        assert!(!m
            .encode()
            .contains("order_timeout_reconcile_discrepancies{"));
    }

    #[test]
    fn the_name_table_is_what_the_encoder_writes() {
        let m = Metrics::new("test");
        exercise_all(&m);
        let names = type_names(&m.encode());
        let mut expected: Vec<String> = METRIC_NAMES.iter().map(|s| (*s).to_owned()).collect();
        let mut got = names.clone();
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
    }

    #[test]
    fn queue_depths_go_when_the_broker_cannot_be_read_and_missing_queues_have_none() {
        let m = Metrics::new("test");
        exercise_all(&m);
        let depth = r#"order_timeout_queue_messages{queue="queue.ordertimeout"} 3"#;
        assert!(m.encode().contains(depth));
        let mut snapshot = snapshot_of_one_queue(false);
        m.set_snapshot(&snapshot);
        assert!(
            !m.encode().contains("order_timeout_queue_messages{"),
            "a missing queue has no depth"
        );
        exercise_all(&m);
        snapshot.broker_error = Some("refused".into());
        m.set_snapshot(&snapshot);
        let text = m.encode();
        assert!(!text.contains("order_timeout_queue_messages{"), "{text}");
        assert!(!text.contains("order_timeout_queue_consumers{"), "{text}");
        assert!(!m.encode().contains(depth));
    }

    /// The gauges read from the database and the broker, as sample names.
    const SNAPSHOT_GAUGES: [&str; 14] = [
        "order_timeout_snapshot_timestamp_seconds",
        "order_timeout_outbox_backlog",
        "order_timeout_outbox_oldest_age_seconds",
        "order_timeout_overdue_orders",
        "order_timeout_overdue_oldest_seconds",
        "order_timeout_payments_after_close",
        "order_timeout_queue_messages",
        "order_timeout_queue_consumers",
        "order_timeout_orders",
        "order_timeout_refunds",
        "order_timeout_needs_human",
        "order_timeout_reconcile_last_success_timestamp",
        "order_timeout_reconcile_discrepancies",
        "order_timeout_reconcile_rows_total",
    ];

    /// The snapshot gauges that have at least one sample in `text`.
    fn snapshot_samples(text: &str) -> Vec<&'static str> {
        SNAPSHOT_GAUGES
            .into_iter()
            .filter(|name| {
                text.lines().any(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
            })
            .collect()
    }

    #[test]
    fn a_process_without_the_collector_lock_exports_no_snapshot_gauge() {
        let m = Metrics::new("relay");
        assert_eq!(snapshot_samples(&m.encode()), Vec::<&str>::new());
        exercise_all(&m);
        assert_eq!(
            snapshot_samples(&m.encode()),
            SNAPSHOT_GAUGES.to_vec(),
            "the holder exports every one"
        );
        m.clear_snapshot();
        let text = m.encode();
        assert_eq!(snapshot_samples(&text), Vec::<&str>::new(), "{text}");
        assert!(text.contains("order_timeout_collector 0"), "{text}");
    }

    #[test]
    fn a_disabled_handle_records_and_encodes_nothing() {
        let m = Metrics::disabled();
        m.settlement(Outcome::Closed, Trigger::Message);
        m.relayed(3, 0);
        assert!(m.encode().is_empty());
        assert!(!m.broker_connected());
    }

    #[test]
    fn samples_carry_their_labels() {
        let m = Metrics::new("worker");
        m.settlement(Outcome::Closed, Trigger::Message);
        m.settlement(Outcome::Closed, Trigger::Message);
        m.settlement(Outcome::Paid, Trigger::Sweep);
        m.settlement_lag(chrono::TimeDelta::milliseconds(1500));
        m.retry(Duration::from_secs(30));
        m.parked("amount_mismatch");
        m.relayed(5, 1);
        m.observe(
            Call::Query,
            &CallResult::Answered {
                status: 404,
                code: Some("ORDER_NOT_EXIST".into()),
            },
            Duration::from_millis(12),
        );
        m.http_request(Cow::Borrowed("/v1/orders"), 201, Duration::from_millis(3));
        let text = m.encode();
        for line in [
            r#"order_timeout_settlements_total{outcome="closed",trigger="message"} 2"#,
            r#"order_timeout_settlements_total{outcome="paid",trigger="sweep"} 1"#,
            r#"order_timeout_settlements_total{outcome="anomaly",trigger="message"} 0"#,
            r#"order_timeout_settlement_lag_seconds_bucket{le="2"} 1"#,
            r#"order_timeout_settlement_lag_seconds_bucket{le="1"} 0"#,
            r#"order_timeout_retries_total{delay="30s"} 1"#,
            r#"order_timeout_parked_total{reason="amount_mismatch"} 1"#,
            "order_timeout_relay_published_total 5",
            "order_timeout_relay_refused_total 1",
            r#"order_timeout_wechatpay_requests_total{call="query",result="ORDER_NOT_EXIST"} 1"#,
            r#"order_timeout_wechatpay_request_duration_seconds_count{call="query"} 1"#,
            r#"order_timeout_http_requests_total{route="/v1/orders",status="201"} 1"#,
            r#"order_timeout_build_info{version=""#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
