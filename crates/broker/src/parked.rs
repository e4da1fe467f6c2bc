//! Reading the parking queue without taking anything away: messages are
//! fetched with `basic.get` and left unacked, so those not acked return to
//! the queue, in their order, when the reader closes.

use amiquip::{AmqpProperties, Channel, Delivery};

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

impl Connection {
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
    /// Takes the message out of the parking queue for good.
    pub fn ack(self) -> Result<(), BrokerError> {
        self.delivery.ack(&self.reader.channel).map_err(|e| {
            BrokerError::from_amiquip(&self.reader.url, "could not ack a parked message", e)
        })
    }
}
