//! Reading the parking queue without taking anything away: messages are
//! fetched with `basic.get` and left unacked, so those not acked return to
//! the queue, in their order, when the reader closes.
//!
//! In quorum mode every read that ends in a return (the reader closing)
//! counts as a delivery of the message (`x-delivery-count`): the parking
//! queue is declared without `x-delivery-limit`, and must never get one by
//! policy, or enough listings would drop what waits for a human.

use std::time::{Duration, Instant};

use amiquip::{
    AmqpProperties, Channel, Consumer, ConsumerMessage, ConsumerOptions, Delivery,
    QueueDeclareOptions, QueueDeleteOptions,
};
use crossbeam_channel::RecvTimeoutError;

use crate::connection::{AmqpUrl, Connection};
use crate::error::BrokerError;
use crate::topology::PARKED_QUEUE;

/// A reader of `queue.ordertimeout.parked`.
pub struct ParkedReader {
    channel: Channel,
    url: AmqpUrl,
    waiting: u32,
}

impl std::fmt::Debug for ParkedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedReader")
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

/// One parked message, held (unacked) until [`ParkedMessage::ack`] or the
/// reader closes.
#[derive(Debug)]
pub struct ParkedMessage<'r> {
    pub body: Vec<u8>,
    pub properties: AmqpProperties,
    delivery: Delivery,
    reader: &'r ParkedReader,
}

/// The exclusive queue whose owner alone may take messages out of the
/// parking queue (see [`Connection::lock_parked`]).
pub const PARKED_LOCK_QUEUE: &str = "queue.ordertimeout.parked.lock";

/// Held while one operator command works on the parking queue; released by
/// [`ParkedLock::release`] or when its connection closes (also when the
/// process dies: the broker deletes an exclusive queue with its owner).
pub struct ParkedLock {
    channel: Channel,
}

impl std::fmt::Debug for ParkedLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedLock").finish_non_exhaustive()
    }
}

impl ParkedLock {
    /// Gives the lock up now.
    pub fn release(self) {
        let _ = self
            .channel
            .queue_delete(PARKED_LOCK_QUEUE, QueueDeleteOptions::default());
        let _ = self.channel.close();
    }
}

impl Connection {
    /// Waits up to `wait` to be the only operator command working on the
    /// parking queue, by declaring the exclusive queue
    /// [`PARKED_LOCK_QUEUE`] (the broker refuses a second owner with 405
    /// `RESOURCE_LOCKED`). Why: a reader holds every message it has read
    /// until it closes, so a second reader at the same time would not see
    /// them and would wrongly report an order as not parked.
    pub fn lock_parked(&mut self, wait: Duration) -> Result<ParkedLock, BrokerError> {
        let until = Instant::now() + wait;
        loop {
            // A refused declare closes its channel: a fresh one each try.
            let channel = self.channel("parking queue lock")?;
            let options = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            };
            match channel.queue_declare(PARKED_LOCK_QUEUE, options) {
                Ok(_) => return Ok(ParkedLock { channel }),
                Err(amiquip::Error::ServerClosedChannel { code: 405, .. })
                    if Instant::now() < until =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(amiquip::Error::ServerClosedChannel { code: 405, .. }) => {
                    return Err(BrokerError::Server {
                        context: format!(
                            "another command (parked --replay, cases replay/drop) has been \
                             working on {PARKED_QUEUE} for over {} s; try again when it is done",
                            wait.as_secs()
                        ),
                        code: 405,
                        message: "RESOURCE_LOCKED".into(),
                    })
                }
                Err(e) => {
                    return Err(BrokerError::from_amiquip(
                        self.url(),
                        "failed to lock the parking queue",
                        e,
                    ))
                }
            }
        }
    }

    /// A reader of the parking queue; [`BrokerError::TopologyMissing`] when
    /// the queue does not exist.
    pub fn parked(&mut self) -> Result<ParkedReader, BrokerError> {
        let channel = self.channel("parking queue reader")?;
        let waiting = match channel.queue_declare_passive(PARKED_QUEUE) {
            Ok(q) => q.declared_message_count().unwrap_or(0),
            Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => {
                return Err(BrokerError::TopologyMissing {
                    what: format!("queue {PARKED_QUEUE}"),
                })
            }
            Err(e) => {
                return Err(BrokerError::from_amiquip(
                    self.url(),
                    &format!("failed to read {PARKED_QUEUE}"),
                    e,
                ))
            }
        };
        Ok(ParkedReader {
            channel,
            url: self.url().clone(),
            waiting,
        })
    }
}

impl ParkedReader {
    /// How many messages were parked when the reader opened.
    #[must_use]
    pub fn waiting(&self) -> u32 {
        self.waiting
    }

    /// The next parked message, or `None` when the queue is empty.
    pub fn next(&self) -> Result<Option<ParkedMessage<'_>>, BrokerError> {
        let got = self.channel.basic_get(PARKED_QUEUE, false).map_err(|e| {
            BrokerError::from_amiquip(&self.url, "could not read the parking queue", e)
        })?;
        Ok(got.map(|g| ParkedMessage {
            body: g.delivery.body.clone(),
            properties: g.delivery.properties.clone(),
            delivery: g.delivery,
            reader: self,
        }))
    }

    /// Has the broker push the parked messages, in order, instead of one
    /// `basic.get` round trip each: at most `prefetch` unacked on the
    /// reader's channel at once (messages read before and kept count too).
    /// Cancel it with [`ParkedStream::cancel`] (never just drop it: see
    /// the lane module on amiquip's trap).
    pub fn stream(&self, prefetch: u16) -> Result<ParkedStream<'_>, BrokerError> {
        let err = |what: &str, e| BrokerError::from_amiquip(&self.url, what, e);
        self.channel
            .qos(0, prefetch, false)
            .map_err(|e| err("could not set the prefetch on the parking queue", e))?;
        let consumer = self
            .channel
            .basic_consume(PARKED_QUEUE, ConsumerOptions::default())
            .map_err(|e| err("could not consume the parking queue", e))?;
        Ok(ParkedStream {
            consumer,
            reader: self,
        })
    }

    /// Closes the reader: every message not acked goes back to the queue.
    pub fn close(self) {
        let _ = self.channel.close();
    }
}

/// The parked messages as the broker pushes them (see
/// [`ParkedReader::stream`]).
pub struct ParkedStream<'r> {
    consumer: Consumer<'r>,
    reader: &'r ParkedReader,
}

impl std::fmt::Debug for ParkedStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedStream").finish_non_exhaustive()
    }
}

impl<'r> ParkedStream<'r> {
    fn message(&self, delivery: Delivery) -> ParkedMessage<'r> {
        ParkedMessage {
            body: delivery.body.clone(),
            properties: delivery.properties.clone(),
            delivery,
            reader: self.reader,
        }
    }

    /// The next message, waiting at most `idle`; `None` when none came:
    /// the queue is empty, or the messages held unacked fill the prefetch.
    pub fn next(&self, idle: Duration) -> Result<Option<ParkedMessage<'r>>, BrokerError> {
        match self.consumer.receiver().recv_timeout(idle) {
            Ok(ConsumerMessage::Delivery(d)) => Ok(Some(self.message(d))),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Ok(other) => Err(BrokerError::Connection {
                context: "reading the parking queue".into(),
                message: format!("the consumer ended: {other:?}"),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(BrokerError::Connection {
                context: "reading the parking queue".into(),
                message: "the connection was lost".into(),
            }),
        }
    }

    /// Stops the broker pushing: cancels the consumer and returns, in
    /// order, what it delivered before the cancel took effect (held like
    /// any message read; left unacked they return to the queue when the
    /// reader closes). Afterwards [`ParkedReader::next`] reads on from
    /// there.
    pub fn cancel(self) -> Result<Vec<ParkedMessage<'r>>, BrokerError> {
        self.consumer.cancel().map_err(|e| {
            BrokerError::from_amiquip(
                &self.reader.url,
                "could not cancel the parking queue consumer",
                e,
            )
        })?;
        let mut delivered = Vec::new();
        loop {
            match self
                .consumer
                .receiver()
                .recv_timeout(Duration::from_secs(5))
            {
                Ok(ConsumerMessage::Delivery(d)) => delivered.push(self.message(d)),
                Ok(ConsumerMessage::ClientCancelled) => return Ok(delivered),
                Ok(other) => {
                    return Err(BrokerError::Connection {
                        context: "cancelling the parking queue consumer".into(),
                        message: format!("the consumer ended: {other:?}"),
                    })
                }
                Err(_) => {
                    return Err(BrokerError::Connection {
                        context: "cancelling the parking queue consumer".into(),
                        message: "no cancel-ok from the broker".into(),
                    })
                }
            }
        }
    }
}

impl ParkedMessage<'_> {
    /// Its delivery tag on the reader's channel: 1 for the first message
    /// read, then one more for each.
    #[must_use]
    pub fn delivery_tag(&self) -> u64 {
        self.delivery.delivery_tag()
    }

    /// Takes this message, and every message read before it and not yet
    /// acked, out of the parking queue for good (one `basic.ack` with
    /// `multiple`): only for a caller that knows it holds none it means to
    /// keep.
    pub fn ack_up_to(self) -> Result<(), BrokerError> {
        self.delivery
            .ack_multiple(&self.reader.channel)
            .map_err(|e| {
                BrokerError::from_amiquip(&self.reader.url, "could not ack parked messages", e)
            })
    }

    /// Takes the message out of the parking queue for good.
    pub fn ack(self) -> Result<(), BrokerError> {
        self.delivery.ack(&self.reader.channel).map_err(|e| {
            BrokerError::from_amiquip(&self.reader.url, "could not ack a parked message", e)
        })
    }
}
