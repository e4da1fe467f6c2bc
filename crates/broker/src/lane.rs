//! Consumer lanes: a channel of its own consuming one queue with manual acks
//! and a prefetch limit, for one worker thread (amiquip's `Channel` is `Send`
//! but not `Sync`). The worker decides what to do with each delivery; this
//! module does the AMQP side, including amiquip's trap: dropping a live
//! consumer can take the whole connection down, so [`LaneConsumer::stop`]
//! cancels it and gives back what was prefetched first.

use std::time::Duration;

use amiquip::{Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery};
use crossbeam_channel::RecvTimeoutError;

use crate::connection::{AmqpUrl, Connection};
use crate::error::BrokerError;

/// A channel for one consumer thread.
pub struct Lane {
    channel: Channel,
    url: AmqpUrl,
    prefetch: u16,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

/// What waiting for the next delivery gave.
#[derive(Debug)]
pub enum LaneEvent {
    /// Boxed: a delivery is large and the other events are tiny.
    Delivery(Box<Delivery>),
    /// Nothing within the wait.
    Idle,
    /// Our own cancel went through.
    Cancelled,
    /// The broker ended the consumer (the queue was deleted, the connection
    /// is closing): the lane is done, reconnect.
    Ended(String),
    /// The connection is gone.
    Lost,
}

impl Connection {
    /// A lane on this connection: a channel that will take at most
    /// `prefetch` unacked messages.
    pub fn lane(&mut self, prefetch: u16) -> Result<Lane, BrokerError> {
        Ok(Lane {
            channel: self.channel("consumer lane")?,
            url: self.url().clone(),
            prefetch,
        })
    }
}

impl Lane {
    /// Starts consuming `queue` with manual acks.
    pub fn consume(&self, queue: &str) -> Result<LaneConsumer<'_>, BrokerError> {
        let consumer = self
            .channel
            .qos(0, self.prefetch, false)
            .and_then(|()| {
                self.channel
                    .basic_consume(queue, ConsumerOptions::default())
            })
            .map_err(|e| {
                BrokerError::from_amiquip(&self.url, &format!("could not consume {queue}"), e)
            })?;
        Ok(LaneConsumer {
            consumer,
            url: &self.url,
        })
    }

    /// Closes the channel (its unacked deliveries go back to the queue).
    pub fn close(self) {
        let _ = self.channel.close();
    }
}

/// A running consumer of a lane.
pub struct LaneConsumer<'c> {
    consumer: Consumer<'c>,
    url: &'c AmqpUrl,
}

impl std::fmt::Debug for LaneConsumer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneConsumer").finish_non_exhaustive()
    }
}

impl LaneConsumer<'_> {
    /// The next delivery, waiting at most `wait`.
    pub fn next(&self, wait: Duration) -> LaneEvent {
        match self.consumer.receiver().recv_timeout(wait) {
            Ok(ConsumerMessage::Delivery(d)) => LaneEvent::Delivery(Box::new(d)),
            Ok(ConsumerMessage::ClientCancelled) => LaneEvent::Cancelled,
            Ok(other) => LaneEvent::Ended(format!("{other:?}")),
            Err(RecvTimeoutError::Timeout) => LaneEvent::Idle,
            Err(RecvTimeoutError::Disconnected) => LaneEvent::Lost,
        }
    }

    /// Acknowledges a delivery: the broker forgets the message.
    pub fn ack(&self, delivery: Delivery) -> Result<(), BrokerError> {
        self.consumer
            .ack(delivery)
            .map_err(|e| BrokerError::from_amiquip(self.url, "acknowledging a message", e))
    }

    /// Gives a delivery back (to the queue when `requeue`).
    pub fn nack(&self, delivery: Delivery, requeue: bool) -> Result<(), BrokerError> {
        self.consumer
            .nack(delivery, requeue)
            .map_err(|e| BrokerError::from_amiquip(self.url, "giving a message back", e))
    }

    /// Stops taking messages and gives back what was prefetched but not
    /// handled: cancel, then drain the receiver (at most 5 s) before the
    /// consumer is dropped.
    pub fn stop(self) {
        if self.consumer.cancel().is_ok() {
            while let Ok(message) = self
                .consumer
                .receiver()
                .recv_timeout(Duration::from_secs(5))
            {
                match message {
                    ConsumerMessage::Delivery(d) => {
                        let _ = self.consumer.nack(d, true);
                    }
                    _ => break,
                }
            }
        }
    }
}
