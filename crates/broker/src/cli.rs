//! Command-line options shared by every binary that touches the topology,
//! so `order-producer declare`, the relay and the worker read the same
//! flags and environment variables and cannot disagree by accident.

use std::time::Duration;

use clap::Args;

use crate::connection::AmqpUrl;
use crate::topology::{QueueType, Topology, DEFAULT_RETRY_DELAYS};

/// Where the broker is and what the topology looks like.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// RabbitMQ URL (`%2f` is the vhost `/`). A password in it is never printed.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        global = true
    )]
    pub amqp_url: String,

    /// TTL of the single delay queue `queue.ordercreate` in milliseconds: the
    /// payment window. Not used when --window is given.
    #[arg(long, env = "DELAY_TTL_MS", default_value_t = 1_800_000, global = true)]
    pub ttl_ms: u64,

    /// Payment windows, one delay queue each (`queue.ordercreate.<window>`),
    /// e.g. `--window 15m --window 30m` or `PAYMENT_WINDOWS=15m,30m`. Replaces
    /// the single `queue.ordercreate`.
    #[arg(long = "window", env = "PAYMENT_WINDOWS", value_delimiter = ',', value_parser = parse_duration, global = true)]
    pub windows: Vec<Duration>,

    /// `classic` (one broker; dead-lettering at most once) or `quorum` (a
    /// cluster; at-least-once dead-lettering).
    #[arg(long, env = "QUEUE_TYPE", default_value = "classic", value_parser = QueueType::parse, global = true)]
    pub queue_type: QueueType,

    /// The worker's retry back-off ladder, one retry queue per delay
    /// (`queue.ordertimeout.retry.<delay>`).
    #[arg(long, env = "RETRY_DELAYS", value_delimiter = ',', value_parser = parse_duration,
          default_value = "5s,30s,2m,10m", global = true)]
    pub retry_delays: Vec<Duration>,
}

impl BrokerArgs {
    #[must_use]
    pub fn url(&self) -> AmqpUrl {
        AmqpUrl::new(self.amqp_url.clone())
    }

    /// The topology these options describe; the error says what is wrong.
    pub fn topology(&self) -> Result<Topology, String> {
        let topo = if self.windows.is_empty() {
            Topology::single(Duration::from_millis(self.ttl_ms), self.queue_type)?
        } else {
            Topology::windows(&self.windows, self.queue_type)?
        };
        let delays = if self.retry_delays.is_empty() {
            DEFAULT_RETRY_DELAYS.to_vec()
        } else {
            self.retry_delays.clone()
        };
        topo.with_retry_delays(&delays)
    }
}

/// `30m`, `10s`, `1500ms`, `2h` -> a duration of at least 1 ms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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
        return Err(format!("{s:?}: a duration must be at least 1ms"));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_mins(30)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_hours(2)));
        for bad in ["30", "0s", "5d", "m", ""] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
