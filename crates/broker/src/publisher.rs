//! Publishing with publisher confirms and the mandatory flag: the only way
//! a caller learns that the broker really holds a message. Either a batch
//! at a time (`publish_all`, `publish_one`), or pipelined (`send`, then
//! `settle` as confirms come in, keeping a bounded window in flight).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use amiquip::{AmqpProperties, Channel, Confirm, ConfirmSmoother, Publish, Return};
use chrono::Utc;
use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::connection::{AmqpUrl, Connection};
use crate::error::BrokerError;
use crate::message::TimeoutMessage;

/// One message to publish to `exchange` (`""`: the default exchange, which
/// routes to the queue named `queue`) with routing key `queue`.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub queue: &'a str,
    pub message: &'a TimeoutMessage,
}

impl Outgoing<'_> {
    /// Where it goes, for logs and operators: the exchange, or the queue
    /// the default exchange routes to.
    #[must_use]
    pub fn target(&self) -> &str {
        target_name(self.exchange, self.queue)
    }
}

fn target_name<'a>(exchange: &'a str, queue: &'a str) -> &'a str {
    if exchange.is_empty() {
        queue
    } else {
        exchange
    }
}

/// What became of one published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// The broker took responsibility for it.
    Confirmed,
    /// The broker refused it (basic.nack).
    Nacked,
    /// No queue took it (mandatory flag; e.g. the queue does not exist).
    Returned(String),
}

/// A channel in confirm mode. Not `Sync`: one per thread.
pub struct ConfirmedPublisher {
    channel: Channel,
    confirms: Receiver<Confirm>,
    returns: Receiver<Return>,
    smoother: ConfirmSmoother,
    next_tag: u64,
    /// Sent and not yet confirmed or refused, by publish tag.
    in_flight: BTreeMap<u64, InFlight>,
    confirm_timeout: Duration,
    url: AmqpUrl,
}

/// What is kept of a message in flight: enough to pair a basic.return
/// (which carries no tag) with it.
struct InFlight {
    exchange: String,
    routing_key: String,
    message_id: Option<String>,
    body_hash: u64,
    returned: Option<String>,
}

fn hash_of(body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

impl std::fmt::Debug for ConfirmedPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmedPublisher")
            .field("url", &self.url)
            .field("next_tag", &self.next_tag)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl ConfirmedPublisher {
    /// Opens a channel on `conn` and puts it in confirm mode.
    pub fn open(
        conn: &mut Connection,
        url: &AmqpUrl,
        confirm_timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let err = |what: &str, e| BrokerError::from_amiquip(url, what, e);
        let channel = conn.channel("publisher")?;
        let returns = channel
            .listen_for_returns()
            .map_err(|e| err("failed to listen for returned messages", e))?;
        let confirms = channel
            .listen_for_publisher_confirms()
            .map_err(|e| err("failed to listen for publisher confirms", e))?;
        channel
            .enable_publisher_confirms()
            .map_err(|e| err("failed to enable publisher confirms", e))?;
        Ok(Self {
            channel,
            confirms,
            returns,
            smoother: ConfirmSmoother::new(),
            next_tag: 1,
            in_flight: BTreeMap::new(),
            confirm_timeout,
            url: url.clone(),
        })
    }

    /// Publishes every message (persistent, mandatory) and waits until the
    /// broker has confirmed or refused each one. The outcomes are in the
    /// order of `batch`. An error (connection lost, confirms not all in
    /// within the timeout) means nothing is known of any of them: the
    /// publisher must then be dropped and the whole batch tried again later.
    pub fn publish_all(
        &mut self,
        batch: &[Outgoing<'_>],
    ) -> Result<Vec<Confirmation>, BrokerError> {
        let now = Utc::now();
        let mut tags = Vec::with_capacity(batch.len());
        for item in batch {
            let body = item.message.body();
            tags.push(self.send(
                item.exchange,
                item.queue,
                &body,
                item.message.properties(now),
            )?);
        }
        self.wait_for(&tags)
    }

    /// Publishes one message with the given body and properties (persistent
    /// and mandatory whatever they say) and waits for its confirm. For the
    /// worker's retry and parking paths, which must copy bodies that may not
    /// even parse. An error means nothing is known: do not ack the original.
    pub fn publish_one(
        &mut self,
        queue: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<Confirmation, BrokerError> {
        let tag = self.send("", queue, body, properties)?;
        let mut outcomes = self.wait_for(&[tag])?;
        Ok(outcomes.pop().expect("one outcome per tag"))
    }

    /// Publishes one message (persistent and mandatory whatever
    /// `properties` say) without waiting for its confirm: the pipelined
    /// path. Returns the tag under which [`ConfirmedPublisher::settle`]
    /// reports what became of it. Keep the number in flight
    /// ([`ConfirmedPublisher::unsettled`]) bounded by settling as you go.
    pub fn send(
        &mut self,
        exchange: &str,
        queue: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<u64, BrokerError> {
        let tag = self.next_tag;
        let message_id = properties.message_id().clone();
        self.publish_raw(exchange, queue, body, properties.with_delivery_mode(2))?;
        self.in_flight.insert(
            tag,
            InFlight {
                exchange: exchange.to_owned(),
                routing_key: queue.to_owned(),
                message_id,
                body_hash: hash_of(body),
                returned: None,
            },
        );
        Ok(tag)
    }

    /// Messages sent and not yet confirmed or refused.
    #[must_use]
    pub fn unsettled(&self) -> usize {
        self.in_flight.len()
    }

    /// The messages the broker has confirmed or refused since the last
    /// call, in tag order. With `block` (and something in flight) it waits
    /// up to the confirm timeout for at least one. An error (connection
    /// lost, nothing confirmed within the timeout) means nothing more is
    /// known of those still in flight: drop the publisher, and leave their
    /// originals where they are.
    pub fn settle(&mut self, block: bool) -> Result<Vec<(u64, Confirmation)>, BrokerError> {
        let wait = block.then_some(self.confirm_timeout);
        self.settle_within(wait)
    }

    /// Waits until every tag in `tags` is settled (within the confirm
    /// timeout, for all of them together); outcomes in the order of `tags`.
    fn wait_for(&mut self, tags: &[u64]) -> Result<Vec<Confirmation>, BrokerError> {
        let Some(&first) = tags.first() else {
            return Ok(Vec::new());
        };
        let mut outcomes: Vec<Option<Confirmation>> = vec![None; tags.len()];
        let mut pending = tags.len();
        let deadline = Instant::now() + self.confirm_timeout;
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            for (tag, outcome) in self.settle_within(Some(left))? {
                // Tags of one call are consecutive; others belong to an
                // earlier call that already gave up on them.
                let Some(index) = tag.checked_sub(first).map(|i| i as usize) else {
                    continue;
                };
                if let Some(slot) = outcomes.get_mut(index) {
                    if slot.is_none() {
                        pending -= 1;
                    }
                    *slot = Some(outcome);
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every pending slot was filled"))
            .collect())
    }

    fn settle_within(
        &mut self,
        wait: Option<Duration>,
    ) -> Result<Vec<(u64, Confirmation)>, BrokerError> {
        let mut raw = Vec::new();
        if let Some(wait) = wait.filter(|_| !self.in_flight.is_empty()) {
            match self.confirms.recv_timeout(wait) {
                Ok(c) => raw.push(c),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(BrokerError::ConfirmTimeout {
                        unconfirmed: self.in_flight.len(),
                        waited_ms: self.confirm_timeout.as_millis(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(BrokerError::Connection {
                        context: format!("waiting for confirms from {}", self.url),
                        message: "the connection was lost".into(),
                    })
                }
            }
        }
        while let Ok(c) = self.confirms.try_recv() {
            raw.push(c);
        }
        // The broker sends basic.return before the ack of an unroutable
        // mandatory message, so the return of every message confirmed in
        // `raw` is in by now. A return names no tag: it goes to the oldest
        // message in flight sent to the same place with the same id and
        // body (which routing cannot tell apart either).
        while let Ok(r) = self.returns.try_recv() {
            let (id, hash) = (r.properties.message_id().clone(), hash_of(&r.content));
            if let Some(f) = self.in_flight.values_mut().find(|f| {
                f.returned.is_none()
                    && f.routing_key == r.routing_key
                    && f.exchange == r.exchange
                    && f.message_id == id
                    && f.body_hash == hash
            }) {
                f.returned = Some(format!(
                    "returned by the broker: {} {} (routing key {})",
                    r.reply_code, r.reply_text, r.routing_key
                ));
            }
        }
        let mut settled = Vec::new();
        for c in raw {
            for confirm in self.smoother.process(c) {
                let (tag, outcome) = match confirm {
                    Confirm::Ack(p) => (p.delivery_tag, Confirmation::Confirmed),
                    Confirm::Nack(p) => (p.delivery_tag, Confirmation::Nacked),
                };
                if let Some(f) = self.in_flight.remove(&tag) {
                    settled.push((tag, f.returned.map_or(outcome, Confirmation::Returned)));
                }
            }
        }
        Ok(settled)
    }

    fn publish_raw(
        &mut self,
        exchange: &str,
        queue: &str,
        body: &[u8],
        properties: AmqpProperties,
    ) -> Result<(), BrokerError> {
        self.channel
            .basic_publish(
                exchange,
                Publish {
                    body,
                    routing_key: queue.to_owned(),
                    mandatory: true,
                    immediate: false,
                    properties,
                },
            )
            .map_err(|e| {
                let to = target_name(exchange, queue);
                BrokerError::from_amiquip(&self.url, &format!("failed to publish to {to}"), e)
            })?;
        self.next_tag += 1;
        Ok(())
    }

    /// Closes the channel cleanly.
    pub fn close(self) -> Result<(), BrokerError> {
        let url = self.url.clone();
        self.channel
            .close()
            .map_err(|e| BrokerError::from_amiquip(&url, "failed to close the channel", e))
    }
}
