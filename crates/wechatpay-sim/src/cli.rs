//! The simulator binary's command line, in the library so that tests can
//! read its definition (`clap::CommandFactory`). Every setting is a
//! `WECHATPAY_SIM_*` environment variable or its flag.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// A local WeChat Pay APIv3 simulator (Native prepay, query and close of
/// payment orders, domestic refunds, payment and refund notifications,
/// trade bills).
///
/// Keys come from the key directory: loaded if it holds them, generated and
/// written there otherwise. The APIv3 key comes from
/// `WECHATPAY_SIM_APIV3_KEY_FILE`, else from apiv3.key in the key directory,
/// else is the built-in test key; it is written to apiv3.key in the key
/// directory. The environment lines for clients are printed on stdout (and
/// written to `WECHATPAY_SIM_ENV_FILE`); logs go to stderr.
#[derive(Debug, Parser)]
#[command(name = "wechatpay-sim", version)]
pub struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(
        long = "wechatpay-sim-listen",
        env = "WECHATPAY_SIM_LISTEN",
        default_value = "127.0.0.1:8099"
    )]
    pub listen: String,
    /// Directory holding (or receiving) the merchant and simulator key files.
    /// Required.
    #[arg(long = "wechatpay-sim-key-dir", env = "WECHATPAY_SIM_KEY_DIR")]
    pub key_dir: Option<PathBuf>,
    /// Also write the environment lines to this file.
    #[arg(long = "wechatpay-sim-env-file", env = "WECHATPAY_SIM_ENV_FILE")]
    pub env_file: Option<PathBuf>,
    /// Merchant id requests must be signed for.
    #[arg(long = "wechatpay-sim-mchid", env = "WECHATPAY_SIM_MCHID", default_value = crate::DEFAULT_MCHID)]
    pub mchid: String,
    /// Merchant certificate serial requests must name.
    #[arg(long = "wechatpay-sim-merchant-serial-no", env = "WECHATPAY_SIM_MERCHANT_SERIAL_NO", default_value = crate::DEFAULT_MERCHANT_SERIAL_NO)]
    pub merchant_serial_no: String,
    /// WeChat Pay public key id the simulator signs with.
    #[arg(long = "wechatpay-sim-public-key-id", env = "WECHATPAY_SIM_PUBLIC_KEY_ID", default_value = crate::DEFAULT_PUBLIC_KEY_ID)]
    pub public_key_id: String,
    /// Treat unknown orders as unpaid prepay orders instead of answering 404.
    #[arg(long = "wechatpay-sim-auto-create", env = "WECHATPAY_SIM_AUTO_CREATE")]
    pub auto_create: bool,
    /// Prepay calls must name this appid (any when not given).
    #[arg(long = "wechatpay-sim-appid", env = "WECHATPAY_SIM_APPID")]
    pub appid: Option<String>,
    /// File holding the merchant's 32-byte APIv3 key (one trailing newline
    /// allowed), which encrypts payment notifications.
    #[arg(
        long = "wechatpay-sim-apiv3-key-file",
        env = "WECHATPAY_SIM_APIV3_KEY_FILE"
    )]
    pub apiv3_key_file: Option<PathBuf>,
    /// Waits before each retry of a failed payment notification, e.g.
    /// `150ms,150ms,300ms` (units ms, s, m, h; empty: never retry). When not
    /// set: WeChat Pay's schedule divided by 100.
    #[arg(long = "wechatpay-sim-notify-schedule", env = "WECHATPAY_SIM_NOTIFY_SCHEDULE", value_parser = parse_schedule)]
    pub notify_schedule: Option<Schedule>,
    /// How long a refund stays PROCESSING before it becomes final, e.g.
    /// `200ms` or `2s` (units ms, s, m, h).
    #[arg(long = "wechatpay-sim-refund-delay", env = "WECHATPAY_SIM_REFUND_DELAY", default_value = "200ms", value_parser = parse_duration)]
    pub refund_delay: Duration,
    /// How long a trade bill download link lives, e.g. `30s` (units ms, s,
    /// m, h).
    #[arg(long = "wechatpay-sim-bill-link-ttl", env = "WECHATPAY_SIM_BILL_LINK_TTL", default_value = "30s", value_parser = parse_duration)]
    pub bill_link_ttl: Duration,
}

/// Retry waits of `WECHATPAY_SIM_NOTIFY_SCHEDULE`.
#[derive(Debug, Clone)]
pub struct Schedule(pub Vec<Duration>);

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
        Args::command().debug_assert();
        let defaults = Args::try_parse_from(["wechatpay-sim"]).unwrap();
        assert_eq!(
            defaults.refund_delay,
            crate::SimConfig::default().refund_delay
        );
        assert_eq!(
            defaults.bill_link_ttl,
            crate::SimConfig::default().bill_link_ttl
        );
        for bad in ["150", "ms", "1.5s", "150ms,,1s", "-1s", "1d"] {
            assert!(parse_schedule(bad).is_err(), "{bad}");
        }
    }
}
