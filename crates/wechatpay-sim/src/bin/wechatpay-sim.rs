//! `wechatpay-sim`: runs the WeChat Pay simulator until killed and prints the
//! environment lines a client needs to talk to it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use wechatpay_sim::{ApiV3Key, SimConfig, SimKeys, Simulator};

/// A local WeChat Pay APIv3 simulator (Native prepay, query and close of
/// payment orders, domestic refunds, payment and refund notifications).
///
/// Keys come from --key-dir: loaded if it holds them, generated and written
/// there otherwise. The APIv3 key comes from --apiv3-key-file, else from
/// apiv3.key in --key-dir, else is the built-in test key; it is written to
/// apiv3.key in --key-dir. The environment lines for clients are printed on
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
    /// Prepay calls must name this appid (any when not given).
    #[arg(long, env = "WECHATPAY_SIM_APPID")]
    appid: Option<String>,
    /// File holding the merchant's 32-byte APIv3 key (one trailing newline
    /// allowed), which encrypts payment notifications.
    #[arg(long, env = "WECHATPAY_SIM_APIV3_KEY_FILE")]
    apiv3_key_file: Option<PathBuf>,
    /// Waits before each retry of a failed payment notification, e.g.
    /// `150ms,150ms,300ms` (units ms, s, m, h; empty: never retry). Default:
    /// WeChat Pay's schedule divided by 100.
    #[arg(long, env = "WECHATPAY_SIM_NOTIFY_SCHEDULE", value_parser = parse_schedule)]
    notify_schedule: Option<Schedule>,
    /// How long a refund stays PROCESSING before it becomes final, e.g.
    /// `200ms` or `2s` (units ms, s, m, h). Default: 200ms.
    #[arg(long, env = "WECHATPAY_SIM_REFUND_DELAY", value_parser = parse_duration)]
    refund_delay: Option<Duration>,
}

/// Retry waits of `--notify-schedule`.
#[derive(Debug, Clone)]
struct Schedule(Vec<Duration>);

fn parse_schedule(text: &str) -> Result<Schedule, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Schedule(Vec::new()));
    }
    text.split(',')
        .map(parse_duration)
        .collect::<Result<_, _>>()
        .map(Schedule)
}

/// A whole number with a unit: `150ms`, `2s`, `1m`, `1h`.
fn parse_duration(part: &str) -> Result<Duration, String> {
    let part = part.trim();
    let split = part
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(part.len());
    let (number, unit) = part.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{part:?} is not a whole number with a unit"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_mins(n)),
        "h" => Ok(Duration::from_hours(n)),
        _ => Err(format!("{part:?} needs a unit: ms, s, m or h")),
    }
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
    // Read before the key directory is written to: --apiv3-key-file may
    // point into it.
    let in_key_dir = args.key_dir.join(wechatpay_sim::APIV3_KEY_FILE);
    let apiv3_key = match &args.apiv3_key_file {
        Some(path) => Some(path),
        None => Some(&in_key_dir).filter(|p| p.exists()),
    }
    .map(|path| ApiV3Key::read(path))
    .transpose()
    .map_err(|e| ConfigProblem(format!("{e}; point --apiv3-key-file at a 32-byte key")))?
    .unwrap_or_default();
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
        refund_delay: args.refund_delay.unwrap_or(defaults.refund_delay),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_with_units() {
        let s = parse_schedule("150ms, 2s,1m,1h").unwrap().0;
        assert_eq!(
            s,
            [
                Duration::from_millis(150),
                Duration::from_secs(2),
                Duration::from_mins(1),
                Duration::from_hours(1)
            ]
        );
        assert!(parse_schedule("").unwrap().0.is_empty());
        for bad in ["150", "ms", "1.5s", "150ms,,1s", "-1s", "1d"] {
            assert!(parse_schedule(bad).is_err(), "{bad}");
        }
    }
}
