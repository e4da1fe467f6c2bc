//! `wechatpay-sim`: runs the WeChat Pay simulator until killed and prints the
//! environment lines a client needs to talk to it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use wechatpay_sim::{SimConfig, SimKeys, Simulator};

/// A local WeChat Pay APIv3 simulator (query and close of payment orders).
///
/// Keys come from --key-dir: loaded if it holds them, generated and written
/// there otherwise. The environment lines for the worker are printed on
/// stdout (and written to --env-file); logs go to stderr.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "WECHATPAY_SIM_LISTEN", default_value = "127.0.0.1:8099")]
    listen: String,
    /// Directory holding (or receiving) the merchant and simulator key files.
    #[arg(long, env = "WECHATPAY_SIM_KEY_DIR")]
    key_dir: PathBuf,
    /// Also write the environment lines to this file.
    #[arg(long, env = "WECHATPAY_SIM_ENV_FILE")]
    env_file: Option<PathBuf>,
    /// Merchant id requests must be signed for.
    #[arg(long, env = "WECHATPAY_SIM_MCHID", default_value = wechatpay_sim::DEFAULT_MCHID)]
    mchid: String,
    /// Merchant certificate serial requests must name.
    #[arg(long, env = "WECHATPAY_SIM_MERCHANT_SERIAL_NO", default_value = wechatpay_sim::DEFAULT_MERCHANT_SERIAL_NO)]
    merchant_serial_no: String,
    /// WeChat Pay public key id the simulator signs with.
    #[arg(long, env = "WECHATPAY_SIM_PUBLIC_KEY_ID", default_value = wechatpay_sim::DEFAULT_PUBLIC_KEY_ID)]
    public_key_id: String,
    /// Treat unknown orders as unpaid prepay orders instead of answering 404.
    #[arg(long, env = "WECHATPAY_SIM_AUTO_CREATE")]
    auto_create: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wechatpay-sim: {e:#}");
            ExitCode::from(e.downcast_ref::<ConfigProblem>().map_or(1, |_| 2))
        }
    }
}

/// Marks errors that are the operator's configuration (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ConfigProblem(String);

fn run(args: &Args) -> anyhow::Result<()> {
    let keys = SimKeys::load_or_generate(&args.key_dir).map_err(|e| {
        ConfigProblem(format!(
            "cannot prepare keys in {}: {e}; point --key-dir at a writable directory or at valid key files",
            args.key_dir.display()
        ))
    })?;
    // Absolute paths in the env lines: the worker may run elsewhere.
    let key_dir = std::fs::canonicalize(&args.key_dir)
        .with_context(|| format!("cannot resolve {}", args.key_dir.display()))?;
    let files = keys
        .write_client_files(&key_dir)
        .with_context(|| format!("cannot write client key files to {}", key_dir.display()))?;
    let config = SimConfig {
        mchid: Some(args.mchid.clone()),
        merchant_serial_no: Some(args.merchant_serial_no.clone()),
        signing_serial: args.public_key_id.clone(),
        auto_create: args.auto_create,
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
        "admin API at {}/sim/ (orders, pay, faults, stats, reset)",
        sim.base_url()
    );
    loop {
        std::thread::park();
    }
}
