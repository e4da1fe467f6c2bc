//! `order-producer`: glue only. Parses the command line, runs it, and maps
//! the outcome to an exit code in one place (0 success, 2 bad usage or
//! configuration, 1 anything else).

use std::process::ExitCode;

use clap::Parser;
use order_producer::{run, Cli, UsageError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
