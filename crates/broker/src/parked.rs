//! Reading the parking queue without taking anything away: messages are
//! fetched with `basic.get` and left unacked, so those not acked return to
//! the queue, in their order, when the reader closes.
//!
//! In quorum mode every read that ends in a return (the reader closing)
//! counts as a delivery of the message (`x-delivery-count`): the parking
//! queue is declared without `x-delivery-limit`, and must never get one by
//! policy, or enough listings would drop what waits for a human.

use std::time::{Duration, Instant};

use amiquip::{AmqpProperties, Channel, Delivery, QueueDeclareOptions, QueueDeleteOptions};

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

    /// Closes the reader: every message not acked goes back to the queue.
    pub fn close(self) {
        let _ = self.channel.close();
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
