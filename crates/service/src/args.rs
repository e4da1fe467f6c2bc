//! The database, broker and topology arguments the binaries share, each an
//! argument group defined once here and flattened into exactly the commands
//! that use it, so that all of them read the same flags and environment
//! variables and cannot disagree. The
//! URLs are held as `DatabaseUrl` / `AmqpUrl` from the moment they are
//! parsed, so `Debug` of the parsed arguments never shows a password.

use std::time::Duration;

use broker::topology::{QueueType, RetryLadder, Topology, DEFAULT_TTL};
use broker::{AmqpUrl, NodeOrder};
use clap::Args;
use domain::DatabaseUrl;

use crate::duration::parse_duration;
use crate::UsageError;

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL. A password in it is never printed.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/order_timeout",
        hide_env_values = true,
        value_parser = parse_database_url
    )]
    pub database_url: DatabaseUrl,
}

#[allow(clippy::unnecessary_wraps)] // clap's value_parser signature
fn parse_database_url(s: &str) -> Result<DatabaseUrl, String> {
    Ok(DatabaseUrl::new(s))
}

#[allow(clippy::unnecessary_wraps)] // clap's value_parser signature
fn parse_amqp_url(s: &str) -> Result<AmqpUrl, String> {
    Ok(AmqpUrl::new(s.to_owned()))
}

/// Where the broker is.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// RabbitMQ URL (`%2f` is the vhost `/`), or several separated by
    /// commas, the nodes of one cluster: the first that answers is used
    /// (see --amqp-node-order), the next on failure. A password in it is
    /// never printed.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        value_parser = parse_amqp_url
    )]
    pub amqp_url: AmqpUrl,

    /// With several AMQP URLs: `spread` (start at a node picked at random
    /// when the process starts, so instances sharing one list spread over
    /// the nodes) or
    /// `listed` (always the first that answers, in list order).
    #[arg(long, env = "AMQP_NODE_ORDER", default_value = "spread", value_parser = NodeOrder::parse)]
    pub amqp_node_order: NodeOrder,
}

/// What the topology looks like: the delay queues, their type and the
/// worker's retry queues. Every process that declares, checks or routes to
/// the topology must be given the same values.
#[derive(Debug, Clone, Args)]
pub struct TopologyArgs {
    /// TTL of the single delay queue `queue.ordercreate` in milliseconds: the
    /// payment window. Not used when --delay-windows is given.
    #[arg(long, env = "DELAY_TTL_MS", default_value_t = DEFAULT_TTL.as_millis() as u64)]
    pub delay_ttl_ms: u64,

    /// The delay queues' windows, one delay queue each
    /// (`queue.ordercreate.<window>`), e.g. `--delay-windows 15m,30m` or
    /// `DELAY_WINDOWS=15m,30m`. Replaces the single `queue.ordercreate`.
    #[arg(long, env = "DELAY_WINDOWS", value_delimiter = ',', value_parser = parse_duration)]
    pub delay_windows: Vec<Duration>,

    /// `classic` (one broker; dead-lettering at most once) or `quorum` (a
    /// cluster; at-least-once dead-lettering).
    #[arg(long, env = "QUEUE_TYPE", default_value = "classic", value_parser = QueueType::parse)]
    pub queue_type: QueueType,

    /// The worker's retry back-off ladder, one retry queue per delay
    /// (`queue.ordertimeout.retry.<delay>`).
    #[arg(long, env = "RETRY_DELAYS", value_parser = parse_retry_ladder, default_value_t = RetryLadder::default())]
    pub retry_delays: RetryLadder,
}

impl DatabaseArgs {
    #[must_use]
    pub fn url(&self) -> DatabaseUrl {
        self.database_url.clone()
    }
}

impl BrokerArgs {
    #[must_use]
    pub fn url(&self) -> AmqpUrl {
        self.amqp_url.clone().with_order(self.amqp_node_order)
    }
}

impl TopologyArgs {
    /// The topology these options describe; a usage error (exit code 2)
    /// saying what is wrong when there is none.
    pub fn topology(&self) -> Result<Topology, UsageError> {
        let topo = if self.delay_windows.is_empty() {
            Topology::single(Duration::from_millis(self.delay_ttl_ms), self.queue_type)
        } else {
            Topology::windows(&self.delay_windows, self.queue_type)
        };
        topo.and_then(|t| t.with_retry_ladder(&self.retry_delays))
            .map_err(|e| UsageError(e.to_string()))
    }
}

/// `RETRY_DELAYS`: durations separated by commas, at least one.
fn parse_retry_ladder(s: &str) -> Result<RetryLadder, String> {
    let delays = s
        .split(',')
        .map(|d| parse_duration(d.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    RetryLadder::new(&delays).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use broker::topology::DEFAULT_RETRY_DELAYS;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        topology: TopologyArgs,
    }

    #[test]
    fn the_shared_arguments_fit_one_command_and_hide_passwords() {
        let cli = Cli::try_parse_from([
            "x",
            "--database-url",
            "postgres://app:db-s3cret@h/db",
            "--amqp-url",
            "amqp://app:mq-s3cret@h:5672/%2f",
            "--retry-delays",
            "1s,2s",
        ])
        .unwrap();
        let debug = format!("{cli:?}");
        assert!(
            !debug.contains("db-s3cret") && !debug.contains("mq-s3cret"),
            "{debug}"
        );
        assert_eq!(cli.topology.topology().unwrap().retry_queues().len(), 2);
        let defaults = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(
            defaults.topology.topology().unwrap().retry_queues().len(),
            DEFAULT_RETRY_DELAYS.len()
        );
        // The default is the broker crate's, written once.
        assert_eq!(defaults.topology.retry_delays, RetryLadder::default());
        assert_eq!(
            defaults.topology.retry_delays.steps(),
            &DEFAULT_RETRY_DELAYS[..]
        );
        assert_eq!(defaults.topology.retry_delays.to_string(), "5s,30s,2m,10m");
        // Empty or unreadable ladders are refused at parsing.
        for bad in ["", "5s,,2m", "0s", "soon"] {
            assert!(
                Cli::try_parse_from(["x", "--retry-delays", bad]).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            defaults.topology.delay_ttl_ms,
            DEFAULT_TTL.as_millis() as u64
        );
    }
}
