//! The RabbitMQ side shared by `order-producer` and `order-timeout-worker`:
//! the topology (names, arguments, declaring and checking it), the delay
//! message codec, connections whose URL never prints its password, and a
//! publisher with confirms.
//!
//! It uses amiquip (synchronous AMQP 0-9-1). Known traps handled here:
//! amiquip errors print the full URL, password included, so they never
//! leave this crate unscrubbed; a failed declare closes the channel, so
//! every declare runs on a channel of its own.

pub mod connection;
pub mod consumer;
pub mod error;
pub mod headers;
pub mod message;
pub mod parked;
pub mod publisher;
pub mod topology;

#[cfg(feature = "test-support")]
pub mod testing;

pub use amiquip::{AmqpProperties, AmqpValue, Delivery, FieldTable};
pub use connection::{connect, AmqpUrl, Connection, NodeOrder};
pub use consumer::{ConsumerChannel, ConsumerEvent, QueueConsumer};
pub use error::{BrokerError, Mismatch, TopologyError, UnknownNodeOrder};
pub use message::{DecodeError, TimeoutMessage};
pub use parked::{ParkedLock, ParkedMessage, ParkedReader, ParkedStream};
pub use publisher::{Confirmation, ConfirmedPublisher, Outgoing};
pub use topology::{DelayQueue, QueueType, RetryLadder, Topology};

/// How long a publisher waits for the broker's confirms by default.
pub const DEFAULT_CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
