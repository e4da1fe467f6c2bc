//! `order-timeout-worker`: will consume dead-lettered order messages from
//! `queue.ordertimeout`, ask WeChat Pay what happened to each order and settle
//! it (close and give stock back, or compensate a late payment).
//!
//! Not built yet. The binary exists so the workspace has its final shape; it
//! refuses to run rather than pretend to settle anything.

use std::process::ExitCode;

use clap::Parser;

/// Settles e-commerce orders left unpaid past their payment deadline.
///
/// NOT BUILT YET: this binary is a placeholder. When built it will consume
/// expired order messages from RabbitMQ (`queue.ordertimeout`), query WeChat
/// Pay for each order and then close it locally (giving stock back), record a
/// late payment, or retry later when the payment state is unknown.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("error: order-timeout-worker is not built yet; nothing was consumed or settled");
    ExitCode::FAILURE
}
