//! The producer side of order-timeout, as a library the binary and tests
//! call: schema migration, stock loading and order creation on top of the
//! `domain` crate.
//!
//! Not built yet (later work): declaring the RabbitMQ topology, relaying
//! the outbox to the broker, re-publishing delay messages and `status`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use domain::{DatabaseUrl, Fen, OrderLine, PgConnection, Quantity, SkuCode, StockLevel};

/// A mistake in the command line or configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Creates orders and loads stock for order-timeout.
///
/// Every new order reserves its stock and queues a delay message (an outbox
/// row) in one database transaction; when the payment window ends, the
/// order-timeout worker settles the order against WeChat Pay.
///
/// Exit codes: 0 success, 2 bad usage or configuration (including a schema
/// that is not migrated), 1 anything else (database unreachable,
/// insufficient stock, unknown SKU, ...).
///
/// Not built yet: `declare` (RabbitMQ topology), `relay` (publishing the
/// outbox), `publish` and `status`.
#[derive(Debug, Parser)]
#[command(name = "order-producer", version, about, long_about)]
pub struct Cli {
    /// PostgreSQL URL. A password in it is never printed.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/order_timeout",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if it does not exist, then create or update its
    /// schema (embedded migrations). A second run changes nothing.
    Migrate,
    /// Manage stock.
    #[command(subcommand)]
    Stock(StockCommand),
    /// Create an order: reserve stock for every item and queue its delay
    /// message, in one transaction. Prints the new order number, alone, on
    /// stdout.
    CreateOrder(CreateOrderArgs),
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
    /// Unit price in fen (1 yuan = 100 fen); unchanged when omitted, 0 for a
    /// new SKU.
    #[arg(long, value_parser = parse_fen, allow_negative_numbers = true)]
    pub price_fen: Option<Fen>,
}

#[derive(Debug, Args)]
pub struct CreateOrderArgs {
    /// An item as CODE:QTY; repeat for several. The same SKU twice is merged.
    #[arg(long = "item", value_name = "CODE:QTY", required = true, value_parser = parse_item)]
    pub items: Vec<OrderLine>,
    /// How long the buyer has to pay, e.g. 30m, 10s, 1500ms, 2h. Must match
    /// the TTL of the delay queue the order's message goes to.
    #[arg(long, env = "PAYMENT_WINDOW", default_value = "30m", value_parser = parse_window)]
    pub payment_window: Duration,
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
pub fn parse_item(s: &str) -> Result<OrderLine, String> {
    let (code, qty) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected CODE:QTY (e.g. TEA:2), got {s:?}"))?;
    let sku = SkuCode::parse(code).map_err(|e| e.to_string())?;
    let quantity = Quantity::parse(qty).map_err(|e| format!("quantity for SKU {sku}: {e}"))?;
    Ok(OrderLine { sku, quantity })
}

/// `30m`, `10s`, `1500ms`, `2h` -> a duration of at least 1 ms.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit; use ms, s, m or h (e.g. 30m)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a number followed by ms, s, m or h"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use ms, s, m or h")),
    }
    .ok_or_else(|| format!("{s:?} is too long"))?;
    if ms == 0 {
        return Err("the payment window must be at least 1ms".to_owned());
    }
    Ok(Duration::from_millis(ms))
}

/// Runs one command; errors carry context for the user.
pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let url = DatabaseUrl::new(cli.database_url.clone());
    if matches!(cli.command, Command::Migrate)
        && domain::db::create_database_if_missing(&url).context(
            "could not create the database; is PostgreSQL running and DATABASE_URL right?",
        )?
    {
        log::info!("created database {url}");
    }
    let mut conn =
        domain::connect(&url).context("is PostgreSQL running and DATABASE_URL right?")?;
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::Migrate => {
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
        }
        Command::Stock(StockCommand::Set(args)) => {
            require_schema(&mut conn)?;
            let change = domain::set_stock(&mut conn, &args.sku, args.quantity, args.price_fen)
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
        }
        Command::CreateOrder(args) => {
            require_schema(&mut conn)?;
            let order = domain::create_order(&mut conn, &args.items, args.payment_window)
                .context("order not created, stock untouched")?;
            log::info!(
                "created order {} ({}), payment deadline {}",
                order.order_no,
                order.total,
                order.deadline.to_rfc3339()
            );
            writeln!(out, "{}", order.order_no)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Fails with a usage error naming the fix when the schema is not migrated.
fn require_schema(conn: &mut PgConnection) -> anyhow::Result<()> {
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
    fn windows_parse_with_units() {
        assert_eq!(parse_window("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_window("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_window("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_window("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_window("30").is_err());
        assert!(parse_window("0s").is_err());
        assert!(parse_window("5d").is_err());
        assert!(parse_window("m").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
