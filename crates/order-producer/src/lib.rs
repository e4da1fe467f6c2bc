//! The producer side of order-timeout, as a library the binary and tests
//! call: schema migration, stock loading and order creation (on the
//! `domain` crate), declaring the RabbitMQ topology, relaying the outbox to
//! the broker, re-publishing delay messages and a status report (on the
//! `broker` crate).

pub mod cases;
pub mod parked;
pub mod relay;
pub mod serve;
pub mod status;
#[cfg(feature = "test-support")]
pub mod testing;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use domain::{Fen, OrderLine, PgConnection, Quantity, SkuCode, StockLevel};
use service::{parse_duration, BrokerArgs, DatabaseArgs, MetricsArgs, TopologyArgs, UsageError};

/// Creates orders and loads stock for order-timeout.
///
/// Every new order reserves its stock and queues a delay message (an outbox
/// row) in one database transaction; when the payment window ends, the
/// order-timeout worker settles the order against WeChat Pay.
///
/// Typical order: `migrate`, `declare`, `stock set`, then `create-order` as
/// orders come in and `relay` running beside them.
///
/// Each command takes only the settings it reads (`order-producer
/// <command> --help`); every setting is a flag or its environment variable
/// (docs/configuration.md).
///
/// Exit codes: 0 success, 2 bad usage or configuration (a schema that is
/// not migrated, a topology that differs from what the broker holds), 1
/// anything else (database or broker unreachable, insufficient stock,
/// unknown SKU, ...).
#[derive(Debug, Parser)]
#[command(name = "order-producer", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if it does not exist, then create or update its
    /// schema (embedded migrations). A second run changes nothing.
    Migrate(MigrateArgs),
    /// Manage stock.
    #[command(subcommand)]
    Stock(StockCommand),
    /// Create an order: reserve stock for every item and queue its delay
    /// message, in one transaction. Prints the new order number, alone, on
    /// stdout.
    CreateOrder(CreateOrderArgs),
    /// Declare the RabbitMQ topology: the dead-letter exchange first, the
    /// consumer queue and its binding, the delay queue(s), the parking queue
    /// and the worker's retry queues. Declaring twice changes nothing; a
    /// queue the broker holds with other arguments exits 2 naming the
    /// difference and how to migrate.
    Declare(DeclareArgs),
    /// Publish the outbox to the delay queues with publisher confirms, and
    /// mark rows published only once the broker confirmed them. Runs until
    /// SIGTERM/SIGINT (finishing the batch in hand), reconnecting with
    /// back-off when the broker or database goes away. Several relays may
    /// run at once.
    Relay(RelayArgs),
    /// Re-emit the delay message of pending orders now (an operator's repair
    /// tool). Orders that are not pending are refused with a message.
    Publish(PublishArgs),
    /// Queue depths, orders by status, the outbox backlog and its age,
    /// payments to refund, refunds by status, what needs a human and stock
    /// balances: for a person to read, or with --json for a machine. Exit 1
    /// when a queue is missing, the broker cannot be read or stock is not
    /// conserved.
    Status(StatusArgs),
    /// List the messages the worker parked (order, attempts, reason, when).
    /// With --replay, send those that are valid timeout messages back to
    /// `queue.ordertimeout` with a fresh attempt count (fix the cause first);
    /// poison stays parked.
    Parked(ParkedArgs),
    /// Everything that waits for a human (orders whose payment did not
    /// match, refunds WeChat Pay refused or reports ABNORMAL, parked
    /// messages), oldest first, with what each side says and the decisions
    /// that apply; and one subcommand per decision (`cases accept --help`,
    /// ...). Each decision asks WeChat Pay first, changes the store in one
    /// transaction and records who decided (--by) and why (--reason); one
    /// that does not apply is refused with exit 2 and changes nothing.
    Cases(Box<cases::CasesArgs>),
    /// The front door: the shop's HTTP API (create and read orders, create
    /// the WeChat Pay Native prepay) behind a bearer token, WeChat Pay's
    /// payment notifications behind WeChat Pay's signature, and /healthz and
    /// /readyz. Runs until SIGTERM/SIGINT, finishing the requests in hand.
    Serve(Box<serve::ServeArgs>),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct DeclareArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub topology: TopologyArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON object instead of text: the same facts (the metrics gauges
    /// are read from the same snapshot), plus `ok`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub topology: TopologyArgs,
}

#[derive(Debug, Args)]
pub struct ParkedArgs {
    /// Send valid parked messages back to the worker.
    #[arg(long)]
    pub replay: bool,
    /// Look at most at this many messages, oldest first (default: 1,000
    /// when listing; every message parked when replaying).
    #[arg(long)]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Publish what is in the outbox now, then exit (1 on any failure; the
    /// rows stay for the next run).
    #[arg(long)]
    pub once: bool,
    /// Outbox rows claimed and published per batch.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub relay_batch_size: i64,
    /// How long to wait for new outbox rows when there are none.
    #[arg(long, env = "RELAY_POLL_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub relay_poll_interval: Duration,
    /// How long to wait for the broker to confirm a batch before treating
    /// the connection as lost.
    #[arg(long, env = "RELAY_CONFIRM_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub relay_confirm_timeout: Duration,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub topology: TopologyArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Order numbers to publish again.
    #[arg(required = true, value_parser = parse_order_no)]
    pub order_nos: Vec<domain::OrderNo>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub topology: TopologyArgs,
}

#[derive(Debug, Subcommand)]
pub enum StockCommand {
    /// Set the units of a SKU available for sale, creating the SKU if new.
    /// Units already held by orders are not counted.
    Set(StockSetArgs),
}

#[derive(Debug, Args)]
pub struct StockSetArgs {
    /// SKU code: 1 to 64 of A-Z a-z 0-9 . _ -
    #[arg(long, value_parser = parse_sku)]
    pub sku: SkuCode,
    /// Units available for sale (0 or more).
    #[arg(long, value_parser = parse_stock, allow_negative_numbers = true)]
    pub quantity: StockLevel,
    /// Unit price in fen (1 yuan = 100 fen), at least 1; required for a new
    /// SKU, unchanged when omitted.
    #[arg(long, value_parser = parse_fen, allow_negative_numbers = true)]
    pub price_fen: Option<Fen>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct CreateOrderArgs {
    /// An item as CODE:QTY; repeat for several. The same SKU twice is merged.
    #[arg(long = "item", value_name = "CODE:QTY", required = true, value_parser = parse_item)]
    pub items: Vec<OrderLine>,
    /// How long the buyer has to pay, e.g. 30m, 10s, 1500ms, 2h. When not
    /// set: the delay queue's TTL (`DELAY_TTL_MS`), or the longest of the
    /// delay windows (`DELAY_WINDOWS`). A window shorter than every delay
    /// queue is refused (exit 2). The relay routes the message by the time
    /// left until the deadline when it publishes.
    #[arg(long, env = "PAYMENT_WINDOW", value_parser = parse_duration)]
    pub payment_window: Option<Duration>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub topology: TopologyArgs,
}

fn parse_order_no(s: &str) -> Result<domain::OrderNo, String> {
    domain::OrderNo::parse(s).map_err(|e| e.to_string())
}

fn parse_sku(s: &str) -> Result<SkuCode, String> {
    SkuCode::parse(s).map_err(|e| e.to_string())
}

fn parse_stock(s: &str) -> Result<StockLevel, String> {
    StockLevel::parse(s).map_err(|e| e.to_string())
}

fn parse_fen(s: &str) -> Result<Fen, String> {
    Fen::parse(s).map_err(|e| e.to_string())
}

/// `CODE:QTY` -> an order line; errors name the SKU.
fn parse_item(s: &str) -> Result<OrderLine, String> {
    let (code, qty) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected CODE:QTY (e.g. TEA:2), got {s:?}"))?;
    let sku = SkuCode::parse(code).map_err(|e| e.to_string())?;
    let quantity = Quantity::parse(qty).map_err(|e| format!("quantity for SKU {sku}: {e}"))?;
    Ok(OrderLine { sku, quantity })
}

/// Runs one command; errors carry context for the user. `stop` is raised
/// by SIGTERM/SIGINT (the binary registers it); `relay` and `serve` watch it.
pub fn run(cli: &Cli, stop: &Arc<AtomicBool>) -> anyhow::Result<ExitCode> {
    let mut out = service::stdout();
    match &cli.command {
        Command::Declare(args) => declare(args),
        Command::Relay(args) => relay(args, stop),
        Command::Parked(args) => parked_cmd(args, stop),
        Command::Cases(args) => cases::run(args, &mut out),
        Command::Serve(args) => {
            serve::run(args, stop)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate(args) => {
            let url = args.database.url();
            if domain::db::create_database_if_missing(&url).context(
                "could not create the database; is PostgreSQL running and DATABASE_URL right?",
            )? {
                log::info!("created database {url}");
            }
            let mut conn = connect(&args.database)?;
            let applied = domain::run_migrations(&mut conn).context("migration failed")?;
            if applied.is_empty() {
                log::info!("schema is up to date; nothing applied");
            } else {
                log::info!(
                    "applied {} migration(s): {}",
                    applied.len(),
                    applied.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stock(StockCommand::Set(args)) => stock_set(args, &mut out),
        Command::CreateOrder(args) => create_order(args, &mut out),
        Command::Publish(args) => {
            let topology = args.topology.topology()?;
            let mut conn = connect(&args.database)?;
            require_schema(&mut conn)?;
            let report =
                relay::publish_orders(&mut conn, &args.broker.url(), &topology, &args.order_nos)?;
            for line in &report.lines {
                writeln!(out, "{line}")?;
            }
            if report.refused > 0 {
                anyhow::bail!(
                    "{} of {} order(s) not published (see above)",
                    report.refused,
                    args.order_nos.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let topology = args.topology.topology()?;
            let mut conn = connect(&args.database)?;
            require_schema(&mut conn)?;
            status_cmd(args, &mut conn, &topology, &mut out)
        }
    }
}

/// `stock set`: one SKU's stock (and price), printed as it now is.
fn stock_set(args: &StockSetArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let mut conn = connect(&args.database)?;
    require_schema(&mut conn)?;
    let change = domain::set_stock(&mut conn, &args.sku, args.quantity, args.price_fen)
        .map_err(|e| match e {
            // A missing or zero --price-fen is bad usage (exit 2).
            domain::StoreError::PriceRequired(_) => anyhow::Error::new(UsageError(e.to_string())),
            e => anyhow::Error::new(e),
        })
        .with_context(|| format!("failed to set stock of SKU {}", args.sku))?;
    let sku = domain::get_sku(&mut conn, &args.sku)?
        .with_context(|| format!("SKU {} vanished after being set", args.sku))?;
    writeln!(
        out,
        "SKU {}: stock {} -> {}, price {} fen{}",
        sku.code,
        change.previous,
        change.current,
        sku.price.get(),
        if change.created { " (new)" } else { "" }
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `create-order`: one order, its number alone on stdout.
fn create_order(args: &CreateOrderArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let topology = args.topology.topology()?;
    let mut conn = connect(&args.database)?;
    require_schema(&mut conn)?;
    let window = topology
        .window_or_default(args.payment_window)
        .map_err(|e| UsageError(format!("--payment-window: {e}")))?;
    let order = domain::create_order(&mut conn, &args.items, window)
        .context("order not created, stock untouched")?;
    log::info!(
        "created order {} ({}), payment deadline {}",
        order.order_no,
        order.total,
        order.deadline.to_rfc3339()
    );
    writeln!(out, "{}", order.order_no)?;
    Ok(ExitCode::SUCCESS)
}

fn connect(database: &DatabaseArgs) -> anyhow::Result<PgConnection> {
    domain::connect(&database.url()).context("is PostgreSQL running and DATABASE_URL right?")
}

fn status_cmd(
    args: &StatusArgs,
    conn: &mut PgConnection,
    topology: &broker::Topology,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let amqp = args.broker.url();
    let report = status::Report::gather(conn, &amqp, topology)?;
    if args.json {
        report.write_json(out)?;
    } else {
        report.write_text(out, &amqp)?;
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn declare(args: &DeclareArgs) -> anyhow::Result<ExitCode> {
    let topology = args.topology.topology()?;
    let amqp = args.broker.url();
    let mut conn = broker::connect(&amqp).context("is RabbitMQ running and AMQP_URL right?")?;
    let declared = topology
        .declare(&mut conn, &amqp)
        .context("the topology was not declared")?;
    let _ = conn.close();
    let mut out = service::stdout();
    writeln!(
        out,
        "declared on {amqp} ({} queues):",
        topology.queue_type.as_str()
    )?;
    for name in declared {
        writeln!(out, "  {name}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn parked_cmd(args: &ParkedArgs, stop: &AtomicBool) -> anyhow::Result<ExitCode> {
    let report = parked::parked(
        &args.broker.url(),
        args.replay,
        args.limit
            .unwrap_or(if args.replay { u32::MAX } else { 1000 }),
        stop,
        &mut service::stdout(),
    )?;
    if args.replay {
        log::info!(
            "replayed {} of {} parked message(s)",
            report.replayed,
            report.listed
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn relay(args: &RelayArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<ExitCode> {
    let topology = args.topology.topology()?;
    let settings = relay::Settings {
        batch_size: args.relay_batch_size,
        poll_interval: args.relay_poll_interval,
        confirm_timeout: args.relay_confirm_timeout,
        max_backoff: Duration::from_secs(5),
    };
    let url = args.database.url();
    if args.once {
        let stats = relay::Relay::new(url, args.broker.url(), topology, settings).drain()?;
        log::info!("relay stopped: {} published", stats.published);
        return Ok(ExitCode::SUCCESS);
    }
    let metrics = args.metrics.metrics("relay");
    let (listener, collector) = if metrics.is_enabled() {
        let listener = service::telemetry::start(
            &args.metrics,
            &metrics,
            service::telemetry::database_url_and_broker(url.clone(), metrics.clone()),
            Arc::clone(stop),
        )?;
        let collector = service::collector::spawn(
            metrics.clone(),
            service::collector::Settings {
                database: url.clone(),
                amqp: args.broker.url(),
                topology: topology.clone(),
                interval: args.metrics.metrics_gauge_interval,
            },
            Arc::clone(stop),
        )?;
        (listener, collector)
    } else {
        (None, None)
    };
    let stats = relay::Relay::new(url, args.broker.url(), topology, settings)
        .with_metrics(metrics)
        .run(stop);
    if let Some(c) = collector {
        let _ = c.join();
    }
    if let Some(l) = listener {
        l.wait()?;
    }
    if stats.failed == 0 {
        log::info!("relay stopped: {} published", stats.published);
    } else {
        log::info!(
            "relay stopped: {} published, {} not accepted by the broker (left in the outbox for a later try)",
            stats.published,
            stats.failed
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Fails with a usage error naming the fix when the schema is not migrated.
pub(crate) fn require_schema(conn: &mut PgConnection) -> anyhow::Result<()> {
    let pending = domain::pending_migrations(conn).context("could not read the schema version")?;
    if pending.is_empty() {
        Ok(())
    } else {
        Err(UsageError(format!(
            "the database schema is not migrated ({} pending: {}); run `order-producer migrate` first",
            pending.len(),
            pending.join(", ")
        ))
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_parse_and_errors_name_the_sku() {
        let l = parse_item("TEA:3").unwrap();
        assert_eq!((l.sku.as_str(), l.quantity.get()), ("TEA", 3));
        assert!(parse_item("TEA").unwrap_err().contains("CODE:QTY"));
        let zero = parse_item("TEA:0").unwrap_err();
        assert!(zero.contains("SKU TEA"), "{zero}");
        assert!(parse_item("bad code:1").unwrap_err().contains("SKU code"));
        assert!(parse_item("TEA:-1").unwrap_err().contains("SKU TEA"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn the_relay_confirm_timeout_default_is_the_brokers() {
        let cli = Cli::try_parse_from(["order-producer", "relay"]).unwrap();
        let Command::Relay(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.relay_confirm_timeout, broker::DEFAULT_CONFIRM_TIMEOUT);
    }
}
