//! `order-timeout-worker`: glue only. Parses the command line, installs the
//! SIGTERM/SIGINT handlers, runs, and maps the outcome to an exit code in one
//! place (0 success, 2 bad usage or configuration, 1 anything else).

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use order_timeout_worker::{exit_code, run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("error: could not install the handler for signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run(&cli, &stop) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}
