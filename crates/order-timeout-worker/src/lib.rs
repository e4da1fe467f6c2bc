//! `order-timeout-worker` as a library: the [`Worker`] ([`supervisor`]) and
//! its parts, each holding the one settler (`service::settle`, re-exported
//! as [`settle`]): the consumer [`lane`]s with their retry and parking
//! paths ([`dispose`]), the [`sweep`], the [`refund`] loop and the
//! [`summary`] line; `reconcile`; and the command line ([`Cli`], [`run`]).
//! The binary only parses, installs signal handlers and maps errors to exit
//! codes.

pub mod dispose;
pub mod lane;
pub mod reconcile;
pub mod refund;
pub use service::settle;
pub mod summary;
pub mod supervisor;
pub mod sweep;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use domain::OrderNo;
use service::{parse_duration, BrokerArgs, DatabaseArgs, PaymentArgs, TopologyArgs, UsageError};

pub use dispose::{dispose, Disposition};
pub use lane::Lane;
pub use refund::{RefundReport, RefundStep, Refunder};
pub use settle::{Settlement, Settler, Trigger};
pub use summary::Summary;
pub use supervisor::{ConsumerSettings, Worker};
pub use sweep::{SweepReport, Sweeper};

/// Settles e-commerce orders left unpaid past their payment deadline.
///
/// Consumes the expired delay messages of `queue.ordertimeout` and, for
/// each order, asks WeChat Pay what happened: unpaid -> close the payment
/// order there, read back CLOSED, then close the order here and give its
/// stock back (one transaction); paid after all -> mark it paid and record
/// the payment, but only when the answer matches the order (amount, CNY,
/// transaction id, success time; otherwise the order is flagged for a human
/// and the message parked); unknown -> change nothing and retry later
/// through the retry queues (bounded; then the message is parked in
/// `queue.ordertimeout.parked` with the reason). An order closed because
/// WeChat Pay had no payment order is rechecked once, --worker-recheck-after
/// later.
/// A periodic sweep settles pending orders whose deadline passed long ago
/// through the same path.
///
/// SIGTERM/SIGINT: stop taking messages, finish those in hand, close
/// cleanly, exit 0.
///
/// Every setting is a flag or its environment variable
/// (docs/configuration.md); `settle` takes only the ones it reads
/// (`order-timeout-worker settle --help`).
///
/// Exit codes: 0 success, 2 bad usage or configuration (missing payment
/// setting, unloadable key, schema not migrated, topology missing), 1
/// anything else.
#[derive(Debug, Parser)]
#[command(
    name = "order-timeout-worker",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub topology: TopologyArgs,

    #[command(flatten)]
    pub payment: PaymentArgs,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(flatten)]
    pub metrics: service::MetricsArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Settle one order now, through the same code path as the consumer,
    /// and print the outcome. On an order already closed here it asks WeChat
    /// Pay again and records a late payment for refund. Exit 0 when the
    /// order is settled, 1 when it could not be (the reason is printed).
    Settle(SettleArgs),
    /// Reconcile a Beijing day against WeChat Pay's trade bill (default:
    /// yesterday, after any day of the last week that no run finished):
    /// payments and refunds the bill has and the store lacks are recorded
    /// through the usual paths; everything else is a discrepancy for a
    /// human (`order-producer cases`). Safe to run again; one run per date
    /// at a time. Exit 0 when reconciled, 1 when a day's bill could not be
    /// had or was refused (nothing recorded from it), 2 bad usage.
    Reconcile(reconcile::ReconcileArgs),
}

/// `settle ORDER_NO` and the settings it reads.
#[derive(Debug, Args)]
pub struct SettleArgs {
    /// The order number.
    #[arg(value_parser = parse_order_no)]
    pub order_no: OrderNo,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub payment: PaymentArgs,
    #[command(flatten)]
    pub settle: SettleSettings,
}

/// What settling one order reads besides the database and WeChat Pay
/// settings, in the consumer and in `settle` alike.
#[derive(Debug, Clone, Args)]
pub struct SettleSettings {
    /// How long after closing an order because WeChat Pay had no payment
    /// order (`ORDER_NOT_EXIST`) to look once more: a payment order created
    /// later from a stale checkout page is closed there, or, if paid,
    /// recorded as paid after close.
    // The settler's default, shown by --help as written here ("10m").
    #[arg(
        long,
        env = "WORKER_RECHECK_AFTER",
        default_value_t = humantime::Duration::from(settle::DEFAULT_RECHECK_AFTER),
        value_parser = parse_human_duration
    )]
    pub worker_recheck_after: humantime::Duration,
    /// Where WeChat Pay sends refund notifications: the public https URL of
    /// the front door's `POST /wechatpay/notify/refund`. Optional: without
    /// it the worker follows refunds by asking WeChat Pay.
    #[arg(long, env = "WECHATPAY_REFUND_NOTIFY_URL")]
    pub wechatpay_refund_notify_url: Option<String>,
}

/// How the consumer runs.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Consumer lanes: threads, each with its own channel, so slow payment
    /// calls overlap.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub worker_concurrency: u16,
    /// Unacked messages the broker may hand each lane.
    #[arg(long, env = "WORKER_PREFETCH", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_prefetch: u16,
    /// Settlement attempts of one message before it is parked.
    #[arg(long, env = "WORKER_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub worker_max_attempts: u32,
    /// Database connections. When not set: the lanes, at most 16, plus 2
    /// for the sweep.
    #[arg(long, env = "WORKER_DB_POOL_SIZE")]
    pub worker_db_pool_size: Option<u32>,
    /// Most orders closed by one statement when many lanes close at once
    /// (each still on its own verified answer; 1 closes every order alone).
    #[arg(long, env = "WORKER_CLOSE_BATCH", default_value_t = domain::close_batch::DEFAULT_MAX_BATCH, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub worker_close_batch: u16,
    /// How often the sweep looks for overdue pending orders.
    #[arg(long, env = "WORKER_SWEEP_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub worker_sweep_interval: Duration,
    /// How long past its deadline an order must be before the sweep takes it.
    #[arg(long, env = "WORKER_SWEEP_GRACE", default_value = "5m", value_parser = parse_duration)]
    pub worker_sweep_grace: Duration,
    /// Orders per sweep batch.
    #[arg(long, env = "WORKER_SWEEP_BATCH", default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub worker_sweep_batch: i64,
    /// How often the summary line (settled per second by outcome, retries,
    /// parked) is logged.
    #[arg(long, env = "WORKER_SUMMARY_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub worker_summary_interval: Duration,
    /// How often refunds of payments after close that are due are requested
    /// at WeChat Pay or followed there.
    #[arg(long, env = "WORKER_REFUND_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub worker_refund_interval: Duration,
    #[command(flatten)]
    pub settle: SettleSettings,
}

fn parse_human_duration(s: &str) -> Result<humantime::Duration, service::DurationError> {
    parse_duration(s).map(humantime::Duration::from)
}

fn parse_order_no(s: &str) -> Result<OrderNo, String> {
    OrderNo::parse(s).map_err(|e| e.to_string())
}

/// Start-up checks shared by both modes: payment settings and keys, the
/// database and its schema. Returns the settler.
pub fn prepare(cli: &Cli) -> anyhow::Result<Settler> {
    prepare_with_metrics(cli, service::Metrics::disabled())
}

/// [`prepare`], counting into `metrics` (settlement lag, WeChat Pay requests).
pub fn prepare_with_metrics(cli: &Cli, metrics: service::Metrics) -> anyhow::Result<Settler> {
    let lanes = u32::from(cli.run.worker_concurrency);
    let pool_size = cli
        .run
        .worker_db_pool_size
        .unwrap_or(lanes.min(16) + 2)
        .max(2);
    settler(
        &cli.database,
        &cli.payment,
        &cli.run.settle,
        Resources {
            idle_connections: usize::from(cli.run.worker_concurrency) + 2,
            pool_size,
            close_batch: usize::from(cli.run.worker_close_batch),
        },
        metrics,
    )
}

/// How much of each a settler holds.
#[derive(Clone, Copy)]
struct Resources {
    idle_connections: usize,
    pool_size: u32,
    close_batch: usize,
}

fn settler(
    database: &DatabaseArgs,
    payment: &PaymentArgs,
    settle: &SettleSettings,
    resources: Resources,
    metrics: service::Metrics,
) -> anyhow::Result<Settler> {
    let payment_config = payment
        .config()
        .map_err(|e| UsageError(e.to_string()))?
        .with_max_idle_connections(resources.idle_connections);
    let client = payment_client::Client::new(payment_config)
        .map_err(|e| UsageError(format!("WeChat Pay client not usable: {e}")))?
        .with_observer(Arc::new(metrics.clone()));
    let url = database.url();
    let pool = domain::build_pool(&url, resources.pool_size, Duration::from_secs(10))
        .context("is PostgreSQL running and DATABASE_URL right?")?;
    let pending = {
        let mut conn = domain::checkout(&pool).context("no database connection")?;
        domain::pending_migrations(&mut conn).context("could not read the schema version")?
    };
    if !pending.is_empty() {
        return Err(UsageError(format!(
            "the database schema is not migrated ({} pending); run `order-producer migrate` first",
            pending.len()
        ))
        .into());
    }
    Ok(Settler::new(pool, Arc::new(client))
        .with_close_batch(resources.close_batch)
        .with_metrics(metrics)
        .with_recheck_after(settle.worker_recheck_after.into()))
}

/// Runs the worker (or `settle`). `stop` is raised by SIGTERM/SIGINT.
pub fn run(cli: &Cli, stop: &Arc<AtomicBool>) -> anyhow::Result<ExitCode> {
    if let Some(Command::Reconcile(args)) = &cli.command {
        return reconcile::run(args, stop);
    }
    if let Some(Command::Settle(args)) = &cli.command {
        let settler = settler(
            &args.database,
            &args.payment,
            &args.settle,
            Resources {
                idle_connections: 2,
                pool_size: 2,
                close_batch: 1,
            },
            service::Metrics::disabled(),
        )?;
        return settle_now(&settler, &args.order_no);
    }
    let topology = cli.topology.topology()?;
    // Always counting: the summary line reads the counters, scraped or not.
    let metrics = service::Metrics::new("worker");
    let settler = prepare_with_metrics(cli, metrics.clone())?;
    let amqp = cli.broker.url();
    // Listening first: /readyz says "not ready" while the broker is away.
    let listener = service::telemetry::start(
        &cli.metrics,
        &metrics,
        service::telemetry::pool_and_broker(settler.pool().clone(), metrics.clone()),
        Arc::clone(stop),
    )?;
    // The topology must exist before we consume: a missing dead-letter
    // exchange would drop expiring messages silently. A broker that is away
    // is waited for; a topology missing or different is exit 2.
    let ready = supervisor::await_topology(&topology, &amqp, stop)
        .context("the worker needs the topology")?;
    if !ready {
        if let Some(l) = listener {
            l.wait()?;
        }
        log::info!("stopped while waiting for the broker");
        return Ok(ExitCode::SUCCESS);
    }
    let settings = ConsumerSettings {
        concurrency: usize::from(cli.run.worker_concurrency),
        prefetch: cli.run.worker_prefetch,
        max_attempts: cli.run.worker_max_attempts,
        sweep_interval: cli.run.worker_sweep_interval,
        sweep_grace: cli.run.worker_sweep_grace,
        sweep_batch: cli.run.worker_sweep_batch,
        summary_interval: cli.run.worker_summary_interval,
        refund_interval: cli.run.worker_refund_interval,
        refund_notify_url: cli.run.settle.wechatpay_refund_notify_url.clone(),
    };
    // The gauges only where someone scrapes them: no collector without a
    // listener (the counters above are the summary line's too).
    let collected = if cli.metrics.metrics_listen.is_some() {
        metrics
    } else {
        service::Metrics::disabled()
    };
    let collector = service::collector::spawn(
        collected,
        service::collector::Settings {
            database: cli.database.url(),
            amqp: amqp.clone(),
            topology: topology.clone(),
            interval: cli.metrics.metrics_gauge_interval,
        },
        Arc::clone(stop),
    )?;
    let worker = Worker::new(settler, topology, amqp, settings);
    worker.run(stop);
    if let Some(c) = collector {
        let _ = c.join();
    }
    if let Some(l) = listener {
        l.wait()?;
    }
    log::info!("worker stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// What the refunds of a payment after close say, in a few words.
fn refund_summary(refunds: &[domain::Refund]) -> String {
    match refunds {
        [] => "no refund on record yet (the worker creates it)".to_owned(),
        [r] => format!("refund {} is {}", r.out_refund_no, r.status),
        rs => format!(
            "refunds: {}",
            rs.iter()
                .map(|r| format!("{} {}", r.out_refund_no, r.status))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn settle_now(settler: &Settler, order_no: &OrderNo) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let s = settler.settle(order_no, Trigger::Operator, chrono::Utc::now());
    s.log(order_no, s.outcome(), 1, started.elapsed());
    let refunds = domain::checkout(settler.pool())
        .and_then(|mut c| domain::refunds_of(&mut c, order_no))
        .context("could not read the order's refunds")?;
    let mut out = service::stdout();
    let mut line = s.to_string();
    if s == (Settlement::PaidAfterClose {
        newly_recorded: false,
    }) {
        line = format!("{line}; {}", refund_summary(&refunds));
    }
    writeln!(out, "{order_no}: {}: {line}", s.outcome())?;
    for r in refunds {
        writeln!(
            out,
            "{order_no}: refund {} of {}: {}{}{}",
            r.out_refund_no,
            r.amount,
            r.status,
            r.refund_id
                .map(|id| format!(" (WeChat Pay refund {id})"))
                .unwrap_or_default(),
            r.needs_human
                .map(|why| format!("; NEEDS A HUMAN: {why}"))
                .unwrap_or_default()
        )?;
    }
    Ok(if s.is_final() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
