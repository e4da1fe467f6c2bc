//! What every order-timeout binary shares, written once: the logging set-up
//! (which keeps secrets out of logs whatever `RUST_LOG` says), the stop flag
//! raised by SIGTERM/SIGINT, the usage-error type and the one mapping of
//! errors to exit codes (0 / 2 / 1), the database and broker arguments,
//! duration parsing and reconnect back-off with jitter; the WeChat Pay
//! settings and the one way a payment WeChat Pay reports becomes a record
//! ([`payments`]), shared by the worker and the front door; the HTTP
//! listener stack ([`http`]), the Prometheus metrics ([`metrics`]), their
//! listener with the health probes ([`telemetry`]) and the one process that
//! reads the database and broker gauges ([`collector`], from the same
//! [`snapshot`] as `order-producer status`).
//!
//! Renamed settings keep working through one table ([`renamed`]), applied
//! by [`cli`] before clap parses.
//!
//! A binary's `main` is one line: `service::main(crate::run)`. Everything
//! it runs lives in libraries that tests call directly.

pub mod args;
pub mod backoff;
pub mod cli;
pub mod collector;
pub mod duration;
pub mod exit;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod payment_args;
pub mod payments;
pub mod reconcile;
pub mod refund;
pub mod renamed;
pub mod settle;
pub mod shutdown;
pub mod snapshot;
pub mod telemetry;
pub mod token;

pub use args::{BrokerArgs, DatabaseArgs, TopologyArgs};
pub use backoff::Backoff;
pub use duration::{parse_duration, DurationError};
pub use exit::{exit_code, main, stdout, UsageError};
pub use metrics::Metrics;
pub use payment_args::{PaymentArgs, SettingError};
pub use settle::{Outcome, Trigger};
pub use shutdown::sleep_unless_stopped;
pub use telemetry::MetricsArgs;
