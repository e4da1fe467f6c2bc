//! `wechatpay-sim`: runs the WeChat Pay simulator until killed and prints the
//! environment lines a client needs to talk to it.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use wechatpay_sim::cli::Args;
use wechatpay_sim::{ApiV3Key, SimConfig, SimKeys, Simulator};

// The one table of renamed settings lives in the `service` crate; the
// simulator includes the file rather than depending on `service` (which
// depends on the payment client this is a test double for).
#[path = "../../../service/src/renamed.rs"]
mod renamed;
// Likewise the logger: the same guard and the same LOG_FORMAT as the others.
#[path = "../../../service/src/logging.rs"]
mod logging;

fn main() -> ExitCode {
    let (command_line, deprecated) = match renamed::apply("wechatpay-sim") {
        Ok(applied) => applied,
        Err(conflict) => {
            eprintln!("wechatpay-sim: {conflict}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init() {
        eprintln!("wechatpay-sim: {e}");
        return ExitCode::from(2);
    }
    for warning in deprecated {
        log::warn!("{warning}");
    }
    let args = Args::parse_from(command_line);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal("wechatpay-sim", &format!("{e:#}"));
            ExitCode::from(e.downcast_ref::<ConfigProblem>().map_or(1, |_| 2))
        }
    }
}

/// Marks errors that are the operator's configuration (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ConfigProblem(String);

fn run(args: &Args) -> anyhow::Result<()> {
    // Read before the key directory is written to: --wechatpay-sim-apiv3-key-file may
    // point into it.
    let key_dir = args.key_dir.as_ref().ok_or_else(|| {
        ConfigProblem(
            "missing setting WECHATPAY_SIM_KEY_DIR (or --wechatpay-sim-key-dir): the directory holding or receiving the keys"
                .into(),
        )
    })?;
    let in_key_dir = key_dir.join(wechatpay_sim::APIV3_KEY_FILE);
    let apiv3_key = match &args.apiv3_key_file {
        Some(path) => Some(path),
        None => Some(&in_key_dir).filter(|p| p.exists()),
    }
    .map(|path| ApiV3Key::read(path))
    .transpose()
    .map_err(|e| {
        ConfigProblem(format!(
            "{e}; point WECHATPAY_SIM_APIV3_KEY_FILE at a 32-byte key"
        ))
    })?
    .unwrap_or_default();
    let keys = SimKeys::load_or_generate(key_dir).map_err(|e| {
        ConfigProblem(format!(
            "cannot prepare keys in {}: {e}; point WECHATPAY_SIM_KEY_DIR at a writable directory or at valid key files",
            key_dir.display()
        ))
    })?;
    // Absolute paths in the env lines: the worker may run elsewhere.
    let key_dir = std::fs::canonicalize(key_dir)
        .with_context(|| format!("cannot resolve {}", key_dir.display()))?;
    let files = keys
        .write_client_files_with(&key_dir, &apiv3_key)
        .with_context(|| format!("cannot write client key files to {}", key_dir.display()))?;
    let defaults = SimConfig::default();
    let config = SimConfig {
        mchid: Some(args.mchid.clone()),
        merchant_serial_no: Some(args.merchant_serial_no.clone()),
        signing_serial: args.public_key_id.clone(),
        auto_create: args.auto_create,
        appid: args.appid.clone(),
        apiv3_key,
        notify_schedule: args
            .notify_schedule
            .clone()
            .map_or(defaults.notify_schedule, |s| s.0),
        refund_delay: args.refund_delay,
        bill_link_ttl: args.bill_link_ttl,
    };
    let sim = Simulator::start(&args.listen, &keys, config).with_context(|| {
        format!(
            "cannot start the simulator on {}; is the port free?",
            args.listen
        )
    })?;
    let lines = sim.env_lines(&files);
    if let Some(path) = &args.env_file {
        std::fs::write(path, &lines)
            .with_context(|| format!("cannot write the env file {}", path.display()))?;
    }
    print!("{lines}");
    // Scripts read the env lines from a pipe: make sure they are out.
    std::io::Write::flush(&mut std::io::stdout()).context("cannot write to stdout")?;
    log::info!(
        "admin API at {}/sim/ (orders, pay, notify, faults, notifications, refunds, stats, reset)",
        sim.base_url()
    );
    loop {
        std::thread::park();
    }
}
