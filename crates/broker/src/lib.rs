//! The RabbitMQ side shared by `order-producer` and `order-timeout-worker`:
//! the topology (names, arguments, declaring and checking it), the delay
//! message codec, connections whose URL never prints its password, and a
//! publisher with confirms.
//!
//! It uses amiquip (synchronous AMQP 0-9-1). Known traps handled here:
//! amiquip errors print the full URL, password included, so they never
//! leave this crate unscrubbed; a failed declare closes the channel, so
//! every declare runs on a channel of its own.

pub mod cli;
pub mod connection;
pub mod error;
pub mod headers;
pub mod message;
pub mod publisher;
pub mod topology;

#[cfg(feature = "test-support")]
pub mod testing;

pub use cli::{parse_duration, BrokerArgs};
pub use connection::{connect, AmqpUrl};
pub use error::{BrokerError, Mismatch};
pub use message::{DecodeError, TimeoutMessage};
pub use publisher::{ConfirmedPublisher, Outcome, Outgoing};
pub use topology::{DelayQueue, QueueType, Topology};

/// Sleeps for `d`, waking early (within 50 ms) once `stop` is raised: how
/// the relay and worker loops wait without delaying SIGTERM.
pub fn sleep_unless_stopped(d: std::time::Duration, stop: &std::sync::atomic::AtomicBool) {
    let until = std::time::Instant::now() + d;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(std::time::Duration::from_millis(50)));
    }
}
