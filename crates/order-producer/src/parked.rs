//! `order-producer parked [--replay]`: what the worker gave up on, and a way
//! to send it back once the cause is fixed.
//!
//! Messages are read with `basic.get` and left unacked; those not replayed
//! return to the parking queue, in their order, when the channel closes.
//! Replayed ones are published (confirmed) to `queue.ordertimeout` with the
//! worker's per-attempt headers removed (`broker::headers::cleared`; a
//! recheck stays a recheck), and only then acked in the parking queue.

use std::io::Write;

use anyhow::Context;
use broker::headers;
use broker::topology::{PARKED_QUEUE, TIMEOUT_QUEUE};
use broker::{AmqpUrl, ConfirmedPublisher, Outcome, TimeoutMessage};

/// How many messages were looked at and replayed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParkedReport {
    pub listed: usize,
    pub replayed: usize,
    pub poison: usize,
}

/// Lists up to `limit` parked messages on `out`; with `replay`, sends the
/// ones that are valid timeout messages back to the worker.
pub fn parked(
    amqp_url: &AmqpUrl,
    replay: bool,
    limit: u32,
    out: &mut impl Write,
) -> anyhow::Result<ParkedReport> {
    let mut conn = broker::connect(amqp_url).context("is RabbitMQ running and AMQP_URL right?")?;
    // A missing queue is a configuration problem (exit 2), not an outage.
    let reader = conn.parked()?;
    let waiting = reader.waiting();
    let mut publisher = if replay {
        Some(ConfirmedPublisher::open(
            &mut conn,
            amqp_url,
            broker::DEFAULT_CONFIRM_TIMEOUT,
        )?)
    } else {
        None
    };
    let mut report = ParkedReport::default();
    writeln!(out, "{waiting} message(s) parked in {PARKED_QUEUE}")?;
    for _ in 0..waiting.min(limit) {
        let Some(d) = reader.next()? else {
            break;
        };
        report.listed += 1;
        let text = |key| headers::text_of(&d.properties, key).unwrap_or_else(|| "-".to_owned());
        let reason = match headers::text_of(&d.properties, headers::DETAIL) {
            Some(detail) => format!("{}: {detail}", text(headers::REASON)),
            None => text(headers::REASON),
        };
        let attempts = text(headers::ATTEMPT);
        let when = text(headers::PARKED_AT);
        let recheck = if headers::is_recheck(&d.properties) {
            " (recheck after close)"
        } else {
            ""
        };
        let Ok(message) = TimeoutMessage::decode(&d.body) else {
            report.poison += 1;
            writeln!(
                out,
                "  (poison, {} bytes)  parked {when}: {reason}  [stays]",
                d.body.len()
            )?;
            continue;
        };
        let Some(publisher) = publisher.as_mut() else {
            writeln!(
                out,
                "  {}{recheck}  attempts {attempts}  parked {when}: {reason}",
                message.order_no
            )?;
            continue;
        };
        let properties = headers::cleared(&d.properties);
        match publisher.publish_one(TIMEOUT_QUEUE, &d.body, properties)? {
            Outcome::Confirmed => {
                let order_no = message.order_no;
                d.ack().context("could not ack the parked copy")?;
                report.replayed += 1;
                writeln!(
                    out,
                    "  {order_no}  replayed to {TIMEOUT_QUEUE} (was: {reason})"
                )?;
            }
            other => writeln!(
                out,
                "  {}  NOT replayed ({other:?}); stays parked",
                message.order_no
            )?,
        }
    }
    if let Some(p) = publisher {
        let _ = p.close();
    }
    // Unacked messages go back to the parking queue here.
    reader.close();
    let _ = conn.close();
    Ok(report)
}
