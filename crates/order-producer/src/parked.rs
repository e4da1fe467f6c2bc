//! The parking queue for operators: `order-producer parked [--replay]`
//! (list it all, send it all back once the cause is fixed), and the broker
//! side of `cases`: [`list`] what is parked, and [`take`] the messages of
//! one order (replay or drop them).
//!
//! Messages are read unacked (pushed by the broker while they flow, then
//! with `basic.get` to the end); those not replayed or dropped return to
//! the parking queue, in their order, when the channel closes (also when
//! this process dies). One command at a time reads the queue (the lock of
//! `broker::Connection::lock_parked`), since a reader hides what it holds. Replayed ones are published with
//! confirms to `queue.ordertimeout` with the worker's per-attempt headers
//! removed (`broker::headers::cleared`; a recheck stays a recheck), and only
//! then acked in the parking queue.
//!
//! `--replay` is pipelined: up to [`REPLAY_WINDOW`] copies in flight, each
//! original acked as soon as its copy is confirmed (with `multiple` while no
//! message kept parked was read before it). So an interruption loses
//! nothing, and can double only the copies confirmed whose original's ack
//! did not reach the broker (at most one window; the worker settles
//! idempotently). amiquip has no AMQP transactions (`tx.select`), which
//! alone could tie a publish and an ack together.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use broker::headers;
use broker::topology::{PARKED_QUEUE, TIMEOUT_QUEUE};
use broker::{
    AmqpUrl, Confirmation, ConfirmedPublisher, Connection, ParkedMessage, TimeoutMessage,
};
use chrono::{DateTime, Utc};
use domain::OrderNo;

/// How long a command waits for another one working on the parking queue
/// (see [`broker::Connection::lock_parked`]) before it gives up.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// How many replayed copies may wait for their confirm at once: enough to
/// keep the broker busy (its confirms of persistent messages come after a
/// disk write), small enough that an interruption doubles little.
pub const REPLAY_WINDOW: usize = 512;

/// How many messages were looked at and replayed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParkedReport {
    pub listed: usize,
    pub replayed: usize,
    pub poison: usize,
    /// Valid messages the broker refused to take back (nack, return): they
    /// stay parked.
    pub refused: usize,
    /// The stop flag (SIGTERM/SIGINT) ended the replay early; what was not
    /// read stays parked.
    pub stopped: bool,
}

/// Lists up to `limit` parked messages on `out`; with `replay`, sends the
/// ones that are valid timeout messages back to the worker, pipelined (see
/// the module documentation). Once `stop` is raised no further message is
/// read: the copies in flight are waited for, their originals acked, and
/// the rest stays parked.
pub fn parked(
    amqp_url: &AmqpUrl,
    replay: bool,
    limit: u32,
    stop: &AtomicBool,
    out: &mut impl Write,
) -> anyhow::Result<ParkedReport> {
    let mut conn = connect(amqp_url)?;
    let lock = conn.lock_parked(LOCK_WAIT)?;
    // A missing queue is a configuration problem (exit 2), not an outage.
    let reader = conn.parked()?;
    let waiting = reader.waiting();
    let mut report = ParkedReport::default();
    writeln!(out, "{waiting} message(s) parked in {PARKED_QUEUE}")?;
    let result = if replay {
        let mut publisher =
            ConfirmedPublisher::open(&mut conn, amqp_url, broker::DEFAULT_CONFIRM_TIMEOUT)?;
        let result = replay_all(
            &reader,
            &mut publisher,
            waiting.min(limit),
            stop,
            &mut report,
            out,
        );
        let _ = publisher.close();
        result
    } else {
        list_to(&reader, waiting.min(limit), &mut report, out)
    };
    // Unacked messages go back to the parking queue here.
    reader.close();
    lock.release();
    let _ = conn.close();
    result?;
    if report.stopped {
        writeln!(
            out,
            "stopped: {} replayed; the rest stays parked",
            report.replayed
        )?;
    }
    Ok(report)
}

fn connect(amqp_url: &AmqpUrl) -> anyhow::Result<Connection> {
    broker::connect(amqp_url).context("is RabbitMQ running and AMQP_URL right?")
}

/// How a parked message reads in the listing: its reason (and detail),
/// attempts, when it was parked and the recheck marker.
struct Described {
    reason: String,
    attempts: String,
    when: String,
    recheck: &'static str,
}

fn describe(d: &ParkedMessage<'_>) -> Described {
    let text = |key| headers::text_of(&d.properties, key).unwrap_or_else(|| "-".to_owned());
    let reason = match headers::text_of(&d.properties, headers::DETAIL) {
        Some(detail) => format!("{}: {detail}", text(headers::REASON)),
        None => text(headers::REASON),
    };
    Described {
        reason,
        attempts: text(headers::ATTEMPT),
        when: text(headers::PARKED_AT),
        recheck: if headers::is_recheck(&d.properties) {
            " (recheck after close)"
        } else {
            ""
        },
    }
}

fn poison_line(d: &ParkedMessage<'_>, what: &Described) -> String {
    format!(
        "  (poison, {} bytes)  parked {}: {}  [stays]",
        d.body.len(),
        what.when,
        what.reason
    )
}

fn list_to(
    reader: &broker::ParkedReader,
    limit: u32,
    report: &mut ParkedReport,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let limit = limit as usize;
    let never = AtomicBool::new(false);
    read_each(
        reader,
        holding_prefetch(limit),
        limit,
        limit,
        &never,
        |read| {
            let Some(d) = read else {
                return Ok(false);
            };
            report.listed += 1;
            let what = describe(&d);
            if let Ok(message) = TimeoutMessage::decode(&d.body) {
                writeln!(
                    out,
                    "  {}{}  attempts {}  parked {}: {}",
                    message.order_no, what.recheck, what.attempts, what.when, what.reason
                )?;
            } else {
                report.poison += 1;
                writeln!(out, "{}", poison_line(&d, &what))?;
            }
            // Dropped unacked: held until the reader closes.
            Ok(true)
        },
    )?;
    Ok(())
}

/// A replayed original whose copy is in flight.
struct Held<'r> {
    original: ParkedMessage<'r>,
    order_no: OrderNo,
    reason: String,
}

/// Acks originals on the reader's channel: one `basic.ack` with `multiple`
/// for a run of them read before any message that must stay parked, one
/// each after that.
#[derive(Default)]
struct Acker {
    /// Delivery tags read and neither acked nor about to be: in flight,
    /// poison, refused.
    kept: BTreeSet<u64>,
}

impl Acker {
    fn read(&mut self, tag: u64) {
        self.kept.insert(tag);
    }

    /// Acks `confirmed` (in delivery-tag order).
    fn ack(&mut self, confirmed: Vec<ParkedMessage<'_>>) -> anyhow::Result<()> {
        for d in &confirmed {
            self.kept.remove(&d.delivery_tag());
        }
        let first_kept = self.kept.first().copied().unwrap_or(u64::MAX);
        let (below, above): (Vec<_>, Vec<_>) = confirmed
            .into_iter()
            .partition(|d| d.delivery_tag() < first_kept);
        // Every message read before the last of `below` is acked already or
        // in `below`: one multiple ack covers them all.
        if let Some(last) = below.into_iter().last() {
            last.ack_up_to()
                .context("could not ack the parked originals")?;
        }
        for d in above {
            d.ack().context("could not ack a parked original")?;
        }
        Ok(())
    }
}

/// The originals whose copies are in flight, and what acks them.
#[derive(Default)]
struct Replaying<'r> {
    in_flight: HashMap<u64, Held<'r>>,
    acker: Acker,
}

impl Replaying<'_> {
    /// Collects what the broker settled (waiting for some with `block`),
    /// acks the originals of the confirmed copies and reports each.
    fn settle(
        &mut self,
        publisher: &mut ConfirmedPublisher,
        block: bool,
        report: &mut ParkedReport,
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        let settled = publisher
            .settle(block)
            .context("replay interrupted; what was not confirmed stays parked")?;
        let mut confirmed = Vec::with_capacity(settled.len());
        for (tag, outcome) in settled {
            let Some(held) = self.in_flight.remove(&tag) else {
                continue;
            };
            if outcome == Confirmation::Confirmed {
                report.replayed += 1;
                writeln!(
                    out,
                    "  {}  replayed to {TIMEOUT_QUEUE} (was: {})",
                    held.order_no, held.reason
                )?;
                confirmed.push(held.original);
            } else {
                report.refused += 1;
                writeln!(
                    out,
                    "  {}  NOT replayed ({outcome:?}); stays parked",
                    held.order_no
                )?;
            }
        }
        self.acker.ack(confirmed)
    }
}

/// How many messages the broker may push ahead of the replay: the window
/// in flight, and as many again for those kept (poison, refused) and those
/// on their way.
const REPLAY_PREFETCH: u16 = 2 * REPLAY_WINDOW as u16;

/// How long the pushed stream may stay silent, with nothing in flight,
/// before the replay reads on with `basic.get`: the queue is empty, or the
/// messages kept fill the prefetch.
const STREAM_IDLE: Duration = Duration::from_millis(300);

impl<'r> Replaying<'r> {
    /// Replays one message read (poison is kept), then settles what the
    /// broker confirmed, waiting while the window is full.
    fn replay(
        &mut self,
        d: ParkedMessage<'r>,
        publisher: &mut ConfirmedPublisher,
        report: &mut ParkedReport,
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        report.listed += 1;
        self.acker.read(d.delivery_tag());
        let what = describe(&d);
        let Ok(message) = TimeoutMessage::decode(&d.body) else {
            report.poison += 1;
            writeln!(out, "{}", poison_line(&d, &what))?;
            return Ok(());
        };
        let tag = publisher
            .send("", TIMEOUT_QUEUE, &d.body, headers::cleared(&d.properties))
            .context("replay interrupted; what was not confirmed stays parked")?;
        self.in_flight.insert(
            tag,
            Held {
                original: d,
                order_no: message.order_no,
                reason: what.reason,
            },
        );
        self.settle(publisher, false, report, out)?;
        while publisher.unsettled() >= REPLAY_WINDOW {
            self.settle(publisher, true, report, out)?;
        }
        Ok(())
    }
}

/// Reads parked messages in order and hands each to `each`: pushed by the
/// broker (no round trip per message) for the first `streamed` (those
/// waiting when the reader opened), then with `basic.get` up to `limit` or
/// the end of the queue, so that a stream stalled by held messages filling
/// `prefetch` cannot end the reading early. `each` also gets `None` when
/// the stream is silent, and returns `true` if it did something that may
/// free the prefetch (settled confirms) to keep streaming. Stops reading
/// once `stop` is raised. Returns how many it read.
fn read_each<'r>(
    reader: &'r broker::ParkedReader,
    prefetch: u16,
    streamed: usize,
    limit: usize,
    stop: &AtomicBool,
    mut each: impl FnMut(Option<ParkedMessage<'r>>) -> anyhow::Result<bool>,
) -> anyhow::Result<usize> {
    let stopped = || stop.load(Ordering::Relaxed);
    let mut read = 0;
    let streamed = streamed.min(limit);
    if streamed > 0 {
        let stream = reader.stream(prefetch.max(1))?;
        while read < streamed && !stopped() {
            if let Some(d) = stream.next(STREAM_IDLE)? {
                read += 1;
                each(Some(d))?;
            } else if !each(None)? {
                break;
            }
        }
        // Pushed before the cancel took effect: handed over within the
        // limit, else left unacked (they return to their place).
        for d in stream.cancel()? {
            if read < streamed && !stopped() {
                read += 1;
                each(Some(d))?;
            }
        }
    }
    while read < limit && !stopped() {
        let Some(d) = reader.next()? else {
            break;
        };
        read += 1;
        each(Some(d))?;
    }
    Ok(read)
}

fn replay_all(
    reader: &broker::ParkedReader,
    publisher: &mut ConfirmedPublisher,
    limit: u32,
    stop: &AtomicBool,
    report: &mut ParkedReport,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let limit = limit as usize;
    let mut replaying = Replaying::default();
    read_each(
        reader,
        REPLAY_PREFETCH,
        limit,
        limit,
        stop,
        |read| match read {
            Some(d) => {
                replaying.replay(d, publisher, report, out)?;
                Ok(true)
            }
            None if publisher.unsettled() > 0 => {
                replaying.settle(publisher, true, report, out)?;
                Ok(true)
            }
            None => Ok(false),
        },
    )?;
    report.stopped = stop.load(Ordering::Relaxed) && report.listed < limit;
    while publisher.unsettled() > 0 {
        replaying.settle(publisher, true, report, out)?;
    }
    Ok(())
}

/// The prefetch for a reader that holds every message it reads (a
/// listing, a scan): all of them, within what AMQP can say.
fn holding_prefetch(limit: usize) -> u16 {
    u16::try_from(limit).unwrap_or(u16::MAX)
}

/// What is parked, oldest first (see [`list`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedList {
    /// Messages ready in the parking queue when it was read (those another
    /// reader held at that moment are not counted).
    pub waiting: u32,
    pub entries: Vec<ParkedEntry>,
}

/// One parked message, as `cases` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedEntry {
    /// `None` for poison (a body that is not a timeout message).
    pub order_no: Option<OrderNo>,
    /// The worker's reason code (`x-ot-reason`, e.g. `retries_exhausted`,
    /// `poison`, `amount_mismatch`); empty when the message carries none.
    pub reason: String,
    /// The same in words (`x-ot-detail`).
    pub detail: Option<String>,
    /// Settlement attempts it had (`x-ot-attempt`).
    pub attempt: Option<u32>,
    /// When the worker parked it (`x-ot-parked-at`; `None` when absent or
    /// not RFC 3339).
    pub parked_at: Option<DateTime<Utc>>,
    /// The recheck of an order closed because WeChat Pay had no payment
    /// order.
    pub recheck: bool,
    pub body_len: usize,
}

impl ParkedEntry {
    fn of(d: &ParkedMessage<'_>) -> Self {
        let p = &d.properties;
        Self {
            order_no: TimeoutMessage::decode(&d.body).ok().map(|m| m.order_no),
            reason: headers::text_of(p, headers::REASON).unwrap_or_default(),
            detail: headers::text_of(p, headers::DETAIL),
            attempt: headers::text_of(p, headers::ATTEMPT).map(|_| headers::attempt_of(p)),
            parked_at: headers::text_of(p, headers::PARKED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            recheck: headers::is_recheck(p),
            body_len: d.body.len(),
        }
    }
}

/// Up to `limit` parked messages, oldest first, taking nothing away (they
/// are read unacked and return when the reader closes). Errors: the broker
/// cannot be reached, or the parking queue does not exist
/// ([`broker::BrokerError::TopologyMissing`] in the chain: a configuration
/// problem).
pub fn list(amqp_url: &AmqpUrl, limit: u32) -> anyhow::Result<ParkedList> {
    let mut conn = connect(amqp_url)?;
    let lock = conn.lock_parked(LOCK_WAIT)?;
    let reader = conn.parked()?;
    let waiting = reader.waiting();
    let mut entries = Vec::new();
    let limit = limit as usize;
    let never = AtomicBool::new(false);
    let result = read_each(
        &reader,
        holding_prefetch(limit),
        waiting as usize,
        limit,
        &never,
        |read| {
            let Some(d) = read else {
                return Ok(false);
            };
            entries.push(ParkedEntry::of(&d));
            Ok(true)
        },
    );
    reader.close();
    lock.release();
    let _ = conn.close();
    result?;
    Ok(ParkedList { waiting, entries })
}

/// What [`take`] does with the messages of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Send them back to the worker (confirmed, per-attempt headers
    /// cleared; a recheck stays a recheck), then take them out.
    Replay,
    /// Take them out for good (the sweep still settles the order).
    Drop,
}

/// What [`take`] did: all zero when nothing of that order was parked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Taken {
    pub replayed: usize,
    pub dropped: usize,
}

impl Taken {
    /// How many messages of the order were taken out of the parking queue.
    #[must_use]
    pub fn count(&self) -> usize {
        self.replayed + self.dropped
    }
}

/// Replays or drops every parked message of `order_no` (a message and its
/// recheck copy can both be parked), leaving every other message parked in
/// its order. Reads the whole parking queue unacked; what it does not take
/// returns when it closes.
///
/// A repeat call finds nothing (0). Every command here works on the
/// parking queue alone (the lock of [`broker::Connection::lock_parked`],
/// waited for up to [`LOCK_WAIT`]): two callers at once on one order, the
/// second finds nothing once the first is done. (Without the lock the
/// broker would still give each message to one reader only, but an order
/// with two messages could be split between the two callers, and a reader
/// holding messages hides them from the other.)
///
/// Errors: the broker cannot be reached, the parking queue does not exist,
/// or the broker refused a replayed copy (that message stays parked; the
/// error says how many were replayed before).
pub fn take(amqp_url: &AmqpUrl, order_no: &OrderNo, action: Take) -> anyhow::Result<Taken> {
    let mut conn = connect(amqp_url)?;
    let lock = conn.lock_parked(LOCK_WAIT)?;
    let reader = conn.parked()?;
    let result = (|| -> anyhow::Result<Taken> {
        let mut mine = Vec::new();
        let never = AtomicBool::new(false);
        let waiting = reader.waiting() as usize;
        read_each(
            &reader,
            holding_prefetch(waiting),
            waiting,
            usize::MAX,
            &never,
            |read| {
                let Some(d) = read else {
                    return Ok(false);
                };
                if TimeoutMessage::decode(&d.body).is_ok_and(|m| &m.order_no == order_no) {
                    mine.push(d);
                }
                Ok(true)
            },
        )?;
        let mut taken = Taken::default();
        if mine.is_empty() {
            return Ok(taken);
        }
        if action == Take::Drop {
            for d in mine {
                d.ack().context("could not drop a parked message")?;
                taken.dropped += 1;
            }
            return Ok(taken);
        }
        let mut publisher =
            ConfirmedPublisher::open(&mut conn, amqp_url, broker::DEFAULT_CONFIRM_TIMEOUT)?;
        let mut refused = Vec::new();
        for d in mine {
            let outcome = publisher
                .publish_one(TIMEOUT_QUEUE, &d.body, headers::cleared(&d.properties))
                .with_context(|| {
                    format!(
                        "could not replay a parked message of order {order_no} \
                         ({} replayed before); it stays parked",
                        taken.replayed
                    )
                })?;
            if outcome == Confirmation::Confirmed {
                d.ack().context("could not ack a replayed parked message")?;
                taken.replayed += 1;
            } else {
                refused.push(outcome);
            }
        }
        let _ = publisher.close();
        if let Some(outcome) = refused.first() {
            anyhow::bail!(
                "the broker refused to take back {} parked message(s) of order {order_no} \
                 ({outcome:?}); they stay parked ({} replayed)",
                refused.len(),
                taken.replayed
            );
        }
        Ok(taken)
    })();
    reader.close();
    lock.release();
    let _ = conn.close();
    result
}
