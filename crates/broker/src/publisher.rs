//! Publishing with publisher confirms and the mandatory flag: the only way
//! a caller learns that the broker really holds a message.

use std::collections::HashMap;
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
pub enum Outcome {
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
    confirm_timeout: Duration,
    url: AmqpUrl,
}

impl std::fmt::Debug for ConfirmedPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmedPublisher")
            .field("url", &self.url)
            .field("next_tag", &self.next_tag)
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
            confirm_timeout,
            url: url.clone(),
        })
    }

    /// Publishes every message (persistent, mandatory) and waits until the
    /// broker has confirmed or refused each one. The outcomes are in the
    /// order of `batch`. An error (connection lost, confirms not all in
    /// within the timeout) means nothing is known of any of them: the
    /// publisher must then be dropped and the whole batch tried again later.
    pub fn publish_all(&mut self, batch: &[Outgoing<'_>]) -> Result<Vec<Outcome>, BrokerError> {
        let now = Utc::now();
        let first_tag = self.next_tag;
        for item in batch {
            let body = item.message.body();
            self.publish_raw(
                item.exchange,
                item.queue,
                &body,
                item.message.properties(now),
            )?;
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut pending = batch.len();
        let deadline = Instant::now() + self.confirm_timeout;
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            let raw = match self.confirms.recv_timeout(left) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(BrokerError::ConfirmTimeout {
                        unconfirmed: pending,
                        waited_ms: self.confirm_timeout.as_millis(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(BrokerError::Connection {
                        context: format!("waiting for confirms from {}", self.url),
                        message: "the connection was lost".into(),
                    })
                }
            };
            for confirm in self.smoother.process(raw) {
                let (tag, outcome) = match confirm {
                    Confirm::Ack(p) => (p.delivery_tag, Outcome::Confirmed),
                    Confirm::Nack(p) => (p.delivery_tag, Outcome::Nacked),
                };
                let Some(index) = tag.checked_sub(first_tag).map(|i| i as usize) else {
                    continue; // a confirm of an earlier batch: already settled
                };
                if let Some(slot) = outcomes.get_mut(index) {
                    if slot.is_none() {
                        pending -= 1;
                    }
                    *slot = Some(outcome);
                }
            }
        }
        // The broker sends basic.return before the ack of an unroutable
        // mandatory message, so every return of this batch is here by now.
        let mut returned: HashMap<String, String> = HashMap::new();
        while let Ok(r) = self.returns.try_recv() {
            if let Some(id) = r.properties.message_id() {
                returned.insert(
                    id.clone(),
                    format!(
                        "returned by the broker: {} {} (routing key {})",
                        r.reply_code, r.reply_text, r.routing_key
                    ),
                );
            }
        }
        Ok(batch
            .iter()
            .zip(outcomes)
            .map(
                |(item, o)| match returned.get(item.message.order_no.as_str()) {
                    Some(why) => Outcome::Returned(why.clone()),
                    None => o.expect("every pending slot was filled"),
                },
            )
            .collect())
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
    ) -> Result<Outcome, BrokerError> {
        let tag = self.next_tag;
        self.publish_raw("", queue, body, properties.with_delivery_mode(2))?;
        let deadline = Instant::now() + self.confirm_timeout;
        let mut outcome = None;
        while outcome.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let raw = match self.confirms.recv_timeout(left) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(BrokerError::ConfirmTimeout {
                        unconfirmed: 1,
                        waited_ms: self.confirm_timeout.as_millis(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(BrokerError::Connection {
                        context: format!("waiting for a confirm from {}", self.url),
                        message: "the connection was lost".into(),
                    })
                }
            };
            for confirm in self.smoother.process(raw) {
                match confirm {
                    Confirm::Ack(p) if p.delivery_tag == tag => outcome = Some(Outcome::Confirmed),
                    Confirm::Nack(p) if p.delivery_tag == tag => outcome = Some(Outcome::Nacked),
                    _ => {}
                }
            }
        }
        // A return precedes the ack of the same message.
        if let Ok(r) = self.returns.try_recv() {
            while self.returns.try_recv().is_ok() {}
            return Ok(Outcome::Returned(format!(
                "returned by the broker: {} {} (routing key {})",
                r.reply_code, r.reply_text, r.routing_key
            )));
        }
        Ok(outcome.expect("loop ends with an outcome"))
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
