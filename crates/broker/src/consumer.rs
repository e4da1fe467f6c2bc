//! Consumer channels: a channel of its own consuming one queue with manual acks
//! and a prefetch limit, for one worker thread (amiquip's `Channel` is `Send`
//! but not `Sync`). The worker decides what to do with each delivery; this
//! module does the AMQP side, including amiquip's trap: dropping a live
//! consumer can take the whole connection down, so [`QueueConsumer::stop`]
//! cancels it and gives back what was prefetched first.

use std::time::Duration;

use amiquip::{Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery};
use crossbeam_channel::RecvTimeoutError;

use crate::connection::{AmqpUrl, Connection};
use crate::error::BrokerError;

/// A channel for one consumer thread.
pub struct ConsumerChannel {
    channel: Channel,
    url: AmqpUrl,
    prefetch: u16,
}

impl std::fmt::Debug for ConsumerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerChannel")
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

/// What waiting for the next delivery gave.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// Boxed: a delivery is large and the other events are tiny.
    Delivery(Box<Delivery>),
    /// Nothing within the wait.
    Idle,
    /// Our own cancel went through.
    Cancelled,
    /// The broker ended the consumer (the queue was deleted, the connection
    /// is closing): the consumer is done, reconnect.
    Ended(String),
    /// The connection is gone.
    Lost,
}

impl Connection {
    /// A consumer channel on this connection: a channel that will take at most
    /// `prefetch` unacked messages.
    pub fn consumer_channel(&mut self, prefetch: u16) -> Result<ConsumerChannel, BrokerError> {
        Ok(ConsumerChannel {
            channel: self.channel("consumer lane")?,
            url: self.url().clone(),
            prefetch,
        })
    }
}

impl ConsumerChannel {
    /// Starts consuming `queue` with manual acks.
    pub fn consume(&self, queue: &str) -> Result<QueueConsumer<'_>, BrokerError> {
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
        Ok(QueueConsumer {
            consumer,
            url: &self.url,
        })
    }

    /// Closes the channel (its unacked deliveries go back to the queue).
    pub fn close(self) {
        let _ = self.channel.close();
    }
}

/// A running consumer on a consumer channel.
pub struct QueueConsumer<'c> {
    consumer: Consumer<'c>,
    url: &'c AmqpUrl,
}

impl std::fmt::Debug for QueueConsumer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueConsumer").finish_non_exhaustive()
    }
}

impl QueueConsumer<'_> {
    /// The next delivery, waiting at most `wait`.
    pub fn next(&self, wait: Duration) -> ConsumerEvent {
        match self.consumer.receiver().recv_timeout(wait) {
            Ok(ConsumerMessage::Delivery(d)) => ConsumerEvent::Delivery(Box::new(d)),
            Ok(ConsumerMessage::ClientCancelled) => ConsumerEvent::Cancelled,
            Ok(other) => ConsumerEvent::Ended(format!("{other:?}")),
            Err(RecvTimeoutError::Timeout) => ConsumerEvent::Idle,
            Err(RecvTimeoutError::Disconnected) => ConsumerEvent::Lost,
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
