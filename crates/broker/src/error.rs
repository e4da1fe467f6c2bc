//! What can go wrong talking to RabbitMQ, typed so callers can decide:
//! a lost connection is worth a retry, a topology mismatch needs an operator.

use std::time::Duration;

use crate::connection::AmqpUrl;
use crate::topology::{duration_label, MAX_TTL_MS};

/// Errors of this crate. Messages never contain the AMQP password.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The connection could not be opened or was lost (network, broker
    /// restarting, socket closed).
    #[error("{context}: {message}")]
    Connection { context: String, message: String },
    /// The broker refused the user or the password: configuration, not an
    /// outage (retrying will not help).
    #[error("{context}: the broker refused the credentials ({message}); check the user and password in AMQP_URL")]
    AccessRefused { context: String, message: String },
    /// The broker closed the channel or connection with an AMQP reply code
    /// (404 `NOT_FOUND`, 406 `PRECONDITION_FAILED`, 320 `CONNECTION_FORCED`, ...).
    #[error("{context}: the broker answered {code}: {message}")]
    Server {
        context: String,
        code: u16,
        message: String,
    },
    /// The broker holds a queue with other arguments than wanted.
    #[error("{0}")]
    TopologyMismatch(Box<Mismatch>),
    /// Part of the topology does not exist.
    #[error("{what} does not exist on the broker; declare the topology first (`order-producer declare` or scripts/setup-topology.sh)")]
    TopologyMissing { what: String },
    /// The retry ladder asked for (`RETRY_DELAYS`) is not the one declared
    /// on the broker: one of its queues does not exist while the rest of
    /// the topology does.
    #[error(
        "RETRY_DELAYS ({setting}) differs from the declared topology: {missing} does not exist; \
         of the default ladder's and this setting's retry queues, the broker has: {found} \
         (`rabbitmqctl list_queues name` lists them all). Set RETRY_DELAYS to the declared \
         delays, or declare this ladder first (`order-producer declare` with the same \
         RETRY_DELAYS; the old retry queues can be deleted once empty)"
    )]
    RetryDelaysDiffer {
        /// The setting, e.g. `5s,30s`.
        setting: String,
        /// The first wanted retry queue that does not exist.
        missing: String,
        /// The retry queues looked for (the default ladder's and the
        /// setting's) that exist, with their delays, or `none`.
        found: String,
    },
    /// Publisher confirms did not all arrive in time.
    #[error("the broker did not confirm {unconfirmed} message(s) within {waited_ms} ms")]
    ConfirmTimeout { unconfirmed: usize, waited_ms: u128 },
}

/// A topology (or a part of one: a retry ladder, a payment window, a queue
/// type) that cannot be declared or served. The messages name the setting
/// at fault; they are shown to users as clap and API errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// `QUEUE_TYPE` is neither `classic` nor `quorum`.
    #[error("unknown queue type {0:?}; use classic or quorum")]
    UnknownQueueType(String),
    /// An empty retry ladder.
    #[error("the retry ladder (RETRY_DELAYS) needs at least one delay, e.g. 5s,30s,2m,10m")]
    EmptyRetryLadder,
    /// A retry delay RabbitMQ's `x-message-ttl` cannot hold (in ms).
    #[error("a retry delay must be from 1 ms to {MAX_TTL_MS} ms (about 24.8 days), got {0} ms")]
    RetryDelayOutOfRange(u128),
    /// No payment window at all.
    #[error("at least one payment window is needed")]
    NoWindow,
    /// A delay or retry queue whose TTL RabbitMQ cannot hold (in ms).
    #[error(
        "{queue}: a delay must be from 1 ms to {MAX_TTL_MS} ms (about 24.8 days), got {ms} ms"
    )]
    DelayOutOfRange { queue: String, ms: u128 },
    /// A payment window shorter than every delay queue's TTL: its message
    /// could only come out after the deadline.
    #[error(
        "a payment window of {} cannot be served: the shortest delay queue holds messages \
         {}; windows of {} or longer can be served (delay queues: {queues}); choose a longer \
         window, or add a delay queue of {} or less to DELAY_WINDOWS in the settings of \
         every process and run `order-producer declare` (docs/operations.md, \
         \"Changing the payment window\")",
        duration_label(*window),
        duration_label(*shortest),
        duration_label(*shortest),
        duration_label(*window)
    )]
    WindowTooShort {
        window: Duration,
        shortest: Duration,
        /// The delay queues, `name (ttl)` each, comma-separated.
        queues: String,
    },
}

/// `AMQP_NODE_ORDER` is neither `spread` nor `listed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected spread or listed, got {0:?}")]
pub struct UnknownNodeOrder(pub String);

/// A queue on the broker whose arguments differ from the wanted ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "queue {queue} exists with {argument} = {there}, but {wanted} is wanted. \
     A queue's arguments cannot be changed in place. {how_to_migrate}"
)]
pub struct Mismatch {
    pub queue: String,
    pub argument: String,
    /// The value the broker holds (`none` when it has none).
    pub there: String,
    pub wanted: String,
    pub how_to_migrate: String,
}

impl BrokerError {
    /// Converts an amiquip error, scrubbing the URL's password from it.
    pub(crate) fn from_amiquip(url: &AmqpUrl, context: &str, e: amiquip::Error) -> Self {
        match e {
            // Not 530 NOT_ALLOWED (a vhost that does not exist, or not for
            // this user): that is waited for, a deployment may create the
            // vhost after the worker starts.
            amiquip::Error::InvalidCredentials => Self::AccessRefused {
                context: context.to_owned(),
                message: "invalid credentials".to_owned(),
            },
            amiquip::Error::ServerClosedChannel { code, message, .. }
            | amiquip::Error::ServerClosedConnection { code, message } => Self::Server {
                context: context.to_owned(),
                code,
                message: url.scrub(&message),
            },
            other => Self::Connection {
                context: context.to_owned(),
                message: url.scrub(&other.to_string()),
            },
        }
    }

    /// True when trying again later may succeed (connection problems,
    /// missing confirms, the broker forcing connections closed).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connection { .. } | Self::ConfirmTimeout { .. } => true,
            // 320 CONNECTION_FORCED (broker shutting down), 541 INTERNAL_ERROR,
            // 506 RESOURCE_ERROR.
            Self::Server { code, .. } => matches!(code, 320 | 506 | 541),
            _ => false,
        }
    }
}
