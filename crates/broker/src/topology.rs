//! The RabbitMQ topology of the design, declared and checked.
//!
//! | object | kind | arguments |
//! | --- | --- | --- |
//! | `exchange.ordertimeout` | fanout, durable | the dead-letter exchange |
//! | `queue.ordertimeout` | durable, bound to the exchange | the worker consumes here |
//! | `queue.ordertimeout.parked` | durable | messages given up on, for humans |
//! | delay queues (`queue.ordercreate`, or `queue.ordercreate.<window>` per window) | durable, no consumers | `x-message-ttl`, `x-dead-letter-exchange` |
//! | retry queues (`queue.ordertimeout.retry.<delay>`) | as delay queues | the worker's back-off ladder |
//!
//! Expiry happens at the head of a queue only, so every delay has a queue of
//! its own with one queue-wide TTL (never per-message `expiration`). The
//! exchange is declared before any queue that dead-letters into it: a message
//! expiring into a missing exchange is dropped silently. In quorum mode every
//! queue is a quorum queue and the dead-lettering ones use
//! `x-dead-letter-strategy=at-least-once` with `x-overflow=reject-publish`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use amiquip::{
    AmqpValue, Channel, ExchangeDeclareOptions, ExchangeType, FieldTable, QueueDeclareOptions,
};

use crate::connection::{AmqpUrl, Connection};
use crate::error::{BrokerError, Mismatch, TopologyError};

/// The dead-letter exchange every delay and retry queue expires into.
pub const EXCHANGE: &str = "exchange.ordertimeout";
/// The queue the worker consumes: expired delay messages land here.
pub const TIMEOUT_QUEUE: &str = "queue.ordertimeout";
/// Where the worker parks messages it gives up on (poison, permanent errors,
/// retries exhausted).
pub const PARKED_QUEUE: &str = "queue.ordertimeout.parked";
/// The delay queue when there is one payment window.
pub const DELAY_QUEUE: &str = "queue.ordercreate";
/// Delay queues per payment window are named `queue.ordercreate.<window>`.
pub const DELAY_QUEUE_PREFIX: &str = "queue.ordercreate.";
/// Retry queues are named `queue.ordertimeout.retry.<delay>`.
pub const RETRY_QUEUE_PREFIX: &str = "queue.ordertimeout.retry.";
/// The default payment window: 30 minutes.
pub const DEFAULT_TTL: Duration = Duration::from_mins(30);
/// The worker's default back-off ladder.
pub const DEFAULT_RETRY_DELAYS: [Duration; 4] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_mins(2),
    Duration::from_mins(10),
];

/// How much longer than the time left until an order's deadline a delay
/// queue's TTL may be and still be chosen at publish time.
///
/// Why not 0: the relay publishes a few hundred milliseconds after the order
/// is written (it polls the outbox every 500 ms by default), so the time
/// left is always a little shorter than the window. Routed strictly, an
/// order whose window is exactly a delay queue's TTL (the usual case) could
/// never use that queue and would crawl up to its deadline through the retry
/// ladder instead. With this tolerance a message published on time arrives
/// at most this much after the deadline; one published late (outbox stuck,
/// relay down) goes to a shorter queue and arrives before it.
pub const ROUTE_TOLERANCE: Duration = Duration::from_secs(1);

/// Where a delay message goes at publish time (see [`Topology::route_remaining`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// A delay queue.
    Delay(&'a DelayQueue),
    /// A retry queue (no delay queue is short enough).
    Retry(&'a DelayQueue),
    /// Straight to [`EXCHANGE`]: the deadline is (nearly) here or past.
    Now,
}

impl<'a> Route<'a> {
    /// The exchange and routing key to publish to.
    #[must_use]
    pub fn target(self) -> (&'a str, &'a str) {
        match self {
            Self::Delay(q) | Self::Retry(q) => ("", q.name.as_str()),
            Self::Now => (EXCHANGE, ""),
        }
    }

    /// What to call the target in logs and operator output.
    #[must_use]
    pub fn name(self) -> &'a str {
        match self {
            Self::Delay(q) | Self::Retry(q) => q.name.as_str(),
            Self::Now => EXCHANGE,
        }
    }
}

/// Classic queues dead-letter at most once; quorum queues (on a cluster)
/// can do it at least once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

impl QueueType {
    /// `classic` or `quorum`.
    pub fn parse(s: &str) -> Result<Self, TopologyError> {
        match s {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            other => Err(TopologyError::UnknownQueueType(other.to_owned())),
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

impl std::str::FromStr for QueueType {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Self, TopologyError> {
        Self::parse(s)
    }
}

/// A queue whose messages expire, after `ttl`, into [`EXCHANGE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayQueue {
    pub name: String,
    pub ttl: Duration,
}

/// `15m`, `30s`, `1500ms`, `2h`: the largest unit that divides evenly.
#[must_use]
pub fn duration_label(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0ms".to_owned()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The retry back-off ladder: the delays of the retry queues, shortest
/// first, at least one, each 1 ms to about 24.8 days, no two alike. The
/// only way in is [`RetryLadder::new`] (or the default), so an empty ladder
/// cannot be represented and no user of it fills a default in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryLadder(Vec<Duration>);

impl RetryLadder {
    /// `delays` sorted, duplicates dropped; refused when empty or when a
    /// delay is out of range.
    pub fn new(delays: &[Duration]) -> Result<Self, TopologyError> {
        if delays.is_empty() {
            return Err(TopologyError::EmptyRetryLadder);
        }
        let mut steps = delays.to_vec();
        steps.sort();
        steps.dedup();
        if let Some(d) = steps
            .iter()
            .find(|d| d.as_millis() == 0 || d.as_millis() > MAX_TTL_MS)
        {
            return Err(TopologyError::RetryDelayOutOfRange(d.as_millis()));
        }
        Ok(Self(steps))
    }

    /// The delays, shortest first (never empty).
    #[must_use]
    pub fn steps(&self) -> &[Duration] {
        &self.0
    }

    /// The `n`th step counting from 0, the longest once `n` is past the end.
    #[must_use]
    pub fn step(&self, n: usize) -> Duration {
        self.0[n.min(self.0.len() - 1)]
    }

    /// The longest delay.
    #[must_use]
    pub fn longest(&self) -> Duration {
        self.0[self.0.len() - 1]
    }
}

impl Default for RetryLadder {
    /// [`DEFAULT_RETRY_DELAYS`].
    fn default() -> Self {
        Self(DEFAULT_RETRY_DELAYS.to_vec())
    }
}

impl fmt::Display for RetryLadder {
    /// `5s,30s,2m,10m`: what `RETRY_DELAYS` takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self.0.iter().map(|d| duration_label(*d)).collect();
        f.write_str(&labels.join(","))
    }
}

/// The whole topology: which delay queues, which retry ladder, which queue type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub queue_type: QueueType,
    /// At least one, sorted by TTL.
    delay_queues: Vec<DelayQueue>,
    /// Sorted by TTL; may be empty.
    retry_queues: Vec<DelayQueue>,
}

/// Largest TTL RabbitMQ's 32-bit `x-message-ttl` argument can hold (~24.8 days).
pub(crate) const MAX_TTL_MS: u128 = i32::MAX as u128;

impl Topology {
    /// One delay queue, `queue.ordercreate`, with `ttl`; default retry ladder.
    pub fn single(ttl: Duration, queue_type: QueueType) -> Result<Self, TopologyError> {
        Self::build(
            vec![DelayQueue {
                name: DELAY_QUEUE.to_owned(),
                ttl,
            }],
            queue_type,
        )
    }

    /// One delay queue per payment window, `queue.ordercreate.<window>`;
    /// default retry ladder.
    pub fn windows(windows: &[Duration], queue_type: QueueType) -> Result<Self, TopologyError> {
        if windows.is_empty() {
            return Err(TopologyError::NoWindow);
        }
        let queues = windows
            .iter()
            .map(|w| DelayQueue {
                name: format!("{DELAY_QUEUE_PREFIX}{}", duration_label(*w)),
                ttl: *w,
            })
            .collect();
        Self::build(queues, queue_type)
    }

    fn build(
        mut delay_queues: Vec<DelayQueue>,
        queue_type: QueueType,
    ) -> Result<Self, TopologyError> {
        delay_queues.sort_by_key(|q| q.ttl);
        delay_queues.dedup();
        let mut topo = Self {
            queue_type,
            delay_queues,
            retry_queues: Vec::new(),
        };
        topo = topo.with_retry_ladder(&RetryLadder::default())?;
        topo.validate()?;
        Ok(topo)
    }

    /// Replaces the retry ladder (`queue.ordertimeout.retry.<delay>` each).
    pub fn with_retry_ladder(mut self, ladder: &RetryLadder) -> Result<Self, TopologyError> {
        self.retry_queues = ladder
            .steps()
            .iter()
            .map(|d| DelayQueue {
                name: format!("{RETRY_QUEUE_PREFIX}{}", duration_label(*d)),
                ttl: *d,
            })
            .collect();
        self.validate()?;
        Ok(self)
    }

    /// [`Topology::with_retry_ladder`] of [`RetryLadder::new`]`(delays)`.
    pub fn with_retry_delays(self, delays: &[Duration]) -> Result<Self, TopologyError> {
        self.with_retry_ladder(&RetryLadder::new(delays)?)
    }

    /// The retry ladder (never empty: every topology has one).
    #[must_use]
    pub fn retry_ladder(&self) -> RetryLadder {
        RetryLadder(self.retry_queues.iter().map(|q| q.ttl).collect())
    }

    fn validate(&self) -> Result<(), TopologyError> {
        for q in self.delay_queues.iter().chain(&self.retry_queues) {
            let ms = q.ttl.as_millis();
            if ms == 0 || ms > MAX_TTL_MS {
                return Err(TopologyError::DelayOutOfRange {
                    queue: q.name.clone(),
                    ms,
                });
            }
        }
        Ok(())
    }

    #[must_use]
    pub fn delay_queues(&self) -> &[DelayQueue] {
        &self.delay_queues
    }

    #[must_use]
    pub fn retry_queues(&self) -> &[DelayQueue] {
        &self.retry_queues
    }

    /// Where a delay message goes when `remaining` is left until its
    /// deadline (deadline - now, at publish time): the delay queue with the
    /// longest TTL <= `remaining` + [`ROUTE_TOLERANCE`]; if none, the retry
    /// queue with the longest delay <= the same; if none (or the deadline
    /// has passed), straight to the exchange, so the worker sees it at once.
    /// A message that comes out before the deadline waits out the rest in
    /// the worker's not-yet-due path.
    #[must_use]
    pub fn route_remaining(&self, remaining: Duration) -> Route<'_> {
        fn fits(queues: &[DelayQueue], within: Duration) -> Option<&DelayQueue> {
            queues.iter().rev().find(|q| q.ttl <= within)
        }
        if remaining.is_zero() {
            return Route::Now;
        }
        let within = remaining.saturating_add(ROUTE_TOLERANCE);
        if let Some(q) = fits(&self.delay_queues, within) {
            return Route::Delay(q);
        }
        if let Some(q) = fits(&self.retry_queues, within) {
            return Route::Retry(q);
        }
        Route::Now
    }

    /// The shortest payment window a declared delay queue can serve: the
    /// shortest delay queue's TTL.
    #[must_use]
    pub fn shortest_window(&self) -> Duration {
        self.delay_queues[0].ttl
    }

    /// The window of an order: `given`, else the longest delay queue's TTL,
    /// refused (as [`Topology::check_window`]) when no delay queue can
    /// serve it.
    pub fn window_or_default(&self, given: Option<Duration>) -> Result<Duration, TopologyError> {
        let window = given.unwrap_or_else(|| {
            self.delay_queues
                .last()
                .expect("a topology has at least one delay queue")
                .ttl
        });
        self.check_window(window)?;
        Ok(window)
    }

    /// Refuses a payment window shorter than every delay queue's TTL (its
    /// message could only come out after the deadline); the message names
    /// the windows that can be served, for an API answer or a usage error.
    pub fn check_window(&self, window: Duration) -> Result<(), TopologyError> {
        let shortest = self.shortest_window();
        if window >= shortest {
            return Ok(());
        }
        let queues: Vec<String> = self
            .delay_queues
            .iter()
            .map(|q| format!("{} ({})", q.name, duration_label(q.ttl)))
            .collect();
        Err(TopologyError::WindowTooShort {
            window,
            shortest,
            queues: queues.join(", "),
        })
    }

    /// The retry queue for a wish to look again after `delay`, chosen like
    /// [`Topology::route`]. `None` when there is no retry ladder.
    #[must_use]
    pub fn retry_route(&self, delay: Duration) -> Option<&DelayQueue> {
        (!self.retry_queues.is_empty()).then(|| longest_within(&self.retry_queues, delay))
    }

    /// Every queue name of the topology, in declaration order.
    #[must_use]
    pub fn queue_names(&self) -> Vec<String> {
        self.queue_specs().into_iter().map(|q| q.name).collect()
    }

    fn queue_specs(&self) -> Vec<QueueSpec> {
        let quorum = self.queue_type == QueueType::Quorum;
        let plain = || {
            let mut args = FieldTable::new();
            if quorum {
                args.insert(
                    "x-queue-type".into(),
                    AmqpValue::LongString("quorum".into()),
                );
            }
            args
        };
        let delaying = |ttl: Duration| {
            let mut args = plain();
            args.insert(
                "x-message-ttl".into(),
                AmqpValue::LongInt(ttl.as_millis() as i32),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AmqpValue::LongString(EXCHANGE.into()),
            );
            if quorum {
                args.insert(
                    "x-dead-letter-strategy".into(),
                    AmqpValue::LongString("at-least-once".into()),
                );
                args.insert(
                    "x-overflow".into(),
                    AmqpValue::LongString("reject-publish".into()),
                );
            }
            args
        };
        let mut specs = vec![
            QueueSpec {
                name: TIMEOUT_QUEUE.into(),
                arguments: plain(),
                bind: true,
                role: Role::Timeout,
            },
            QueueSpec {
                name: PARKED_QUEUE.into(),
                arguments: plain(),
                bind: false,
                role: Role::Parked,
            },
        ];
        for q in &self.delay_queues {
            specs.push(QueueSpec {
                name: q.name.clone(),
                arguments: delaying(q.ttl),
                bind: false,
                role: Role::Delay,
            });
        }
        for q in &self.retry_queues {
            specs.push(QueueSpec {
                name: q.name.clone(),
                arguments: delaying(q.ttl),
                bind: false,
                role: Role::Retry,
            });
        }
        specs
    }

    /// Declares the exchange, then every queue, then the binding. Declaring
    /// again with the same topology changes nothing. A queue that exists with
    /// other arguments gives [`BrokerError::TopologyMismatch`] naming the
    /// queue, the argument, both values and how to migrate.
    pub fn declare(
        &self,
        conn: &mut Connection,
        url: &AmqpUrl,
    ) -> Result<Vec<String>, BrokerError> {
        let channel = open_channel(conn, url)?;
        // The exchange first: a message expiring into a missing exchange is
        // dropped silently.
        channel
            .exchange_declare(
                ExchangeType::Fanout,
                EXCHANGE,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
            )
            .map_err(|e| {
                BrokerError::from_amiquip(url, &format!("failed to declare exchange {EXCHANGE}"), e)
            })?;
        let mut declared = vec![EXCHANGE.to_owned()];
        for spec in self.queue_specs() {
            let result = channel.queue_declare(
                spec.name.clone(),
                QueueDeclareOptions {
                    durable: true,
                    arguments: spec.arguments.clone(),
                    ..QueueDeclareOptions::default()
                },
            );
            if let Err(e) = result {
                let err = BrokerError::from_amiquip(
                    url,
                    &format!("failed to declare queue {}", spec.name),
                    e,
                );
                return Err(mismatch(err, &spec, self.queue_type));
            }
            if spec.bind {
                channel
                    .queue_bind(spec.name.clone(), EXCHANGE, "", FieldTable::new())
                    .map_err(|e| {
                        BrokerError::from_amiquip(
                            url,
                            &format!("failed to bind {} to {EXCHANGE}", spec.name),
                            e,
                        )
                    })?;
            }
            declared.push(spec.name);
        }
        let _ = channel.close();
        Ok(declared)
    }

    /// Checks that the exchange and every queue exist, and that every queue
    /// has the arguments this topology wants (what the worker does at start
    /// and on every reconnect): [`BrokerError::TopologyMissing`] names what is
    /// missing, [`BrokerError::TopologyMismatch`] the queue, the argument and
    /// both values. It creates nothing: existence is checked passively first;
    /// the arguments are then compared by declaring the existing queue again
    /// with ours, which RabbitMQ refuses (406) when they differ and otherwise
    /// leaves as it is. Each step runs on a channel of its own, since a
    /// failed declare closes its channel.
    pub fn check(&self, conn: &mut Connection, url: &AmqpUrl) -> Result<(), BrokerError> {
        let channel = open_channel(conn, url)?;
        if let Err(e) = channel.exchange_declare_passive(EXCHANGE) {
            return Err(missing_or(url, format!("exchange {EXCHANGE}"), e));
        }
        let _ = channel.close();
        for spec in self.queue_specs() {
            let channel = open_channel(conn, url)?;
            if let Err(e) = channel.queue_declare_passive(spec.name.clone()) {
                let err = missing_or(url, format!("queue {}", spec.name), e);
                // The exchange and the queues before it exist (they are
                // checked first): a missing retry queue means the ladder
                // asked for is not the one declared.
                if spec.role == Role::Retry && matches!(err, BrokerError::TopologyMissing { .. }) {
                    return Err(self.retry_delays_differ(conn, url, &spec.name)?);
                }
                return Err(err);
            }
            let _ = channel.close();
            let channel = open_channel(conn, url)?;
            let same = channel.queue_declare(
                spec.name.clone(),
                QueueDeclareOptions {
                    durable: true,
                    arguments: spec.arguments.clone(),
                    ..QueueDeclareOptions::default()
                },
            );
            match same {
                Ok(_) => {
                    let _ = channel.close();
                }
                Err(e) => {
                    let err = BrokerError::from_amiquip(
                        url,
                        &format!("failed to check queue {}", spec.name),
                        e,
                    );
                    return Err(mismatch(err, &spec, self.queue_type));
                }
            }
        }
        Ok(())
    }

    /// The error for a wanted retry queue `missing` that does not exist:
    /// the setting and the retry queues that do exist. Without the
    /// management API the broker cannot list its queues, so the candidates
    /// are the default ladder's names and the setting's, looked up
    /// passively (each on a channel of its own: a 404 closes it).
    fn retry_delays_differ(
        &self,
        conn: &mut Connection,
        url: &AmqpUrl,
        missing: &str,
    ) -> Result<BrokerError, BrokerError> {
        let mut candidates: Vec<Duration> = DEFAULT_RETRY_DELAYS
            .iter()
            .copied()
            .chain(self.retry_queues.iter().map(|q| q.ttl))
            .collect();
        candidates.sort();
        candidates.dedup();
        let mut found = Vec::new();
        for delay in candidates {
            let name = format!("{RETRY_QUEUE_PREFIX}{}", duration_label(delay));
            let channel = open_channel(conn, url)?;
            match channel.queue_declare_passive(name.clone()) {
                Ok(_) => {
                    let _ = channel.close();
                    found.push(format!("{name} ({})", duration_label(delay)));
                }
                Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => {}
                Err(e) => {
                    return Err(BrokerError::from_amiquip(
                        url,
                        &format!("failed to check queue {name}"),
                        e,
                    ))
                }
            }
        }
        Ok(BrokerError::RetryDelaysDiffer {
            setting: self.retry_delays_label(),
            missing: missing.to_owned(),
            found: if found.is_empty() {
                "none".to_owned()
            } else {
                found.join(", ")
            },
        })
    }

    /// The retry ladder as `RETRY_DELAYS` spells it, e.g. `5s,30s`.
    #[must_use]
    pub fn retry_delays_label(&self) -> String {
        self.retry_queues
            .iter()
            .map(|q| duration_label(q.ttl))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many messages wait in every queue of the topology.
    pub fn depths(
        &self,
        conn: &mut Connection,
        url: &AmqpUrl,
    ) -> Result<Vec<QueueDepth>, BrokerError> {
        let mut out = Vec::new();
        for name in self.queue_names() {
            let channel = open_channel(conn, url)?;
            match channel.queue_declare_passive(name.clone()) {
                Ok(q) => {
                    out.push(QueueDepth {
                        name,
                        state: Some((
                            q.declared_message_count().unwrap_or(0),
                            q.declared_consumer_count().unwrap_or(0),
                        )),
                    });
                    let _ = channel.close();
                }
                Err(amiquip::Error::ServerClosedChannel { code: 404, .. }) => {
                    out.push(QueueDepth { name, state: None });
                }
                Err(e) => {
                    return Err(BrokerError::from_amiquip(
                        url,
                        &format!("failed to read queue {name}"),
                        e,
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// One queue's depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub name: String,
    /// `(messages ready, consumers)`, or `None` when the queue does not exist.
    pub state: Option<(u32, u32)>,
}

fn longest_within(queues: &[DelayQueue], d: Duration) -> &DelayQueue {
    queues
        .iter()
        .rev()
        .find(|q| q.ttl <= d)
        .unwrap_or(&queues[0])
}

fn open_channel(conn: &mut Connection, _url: &AmqpUrl) -> Result<Channel, BrokerError> {
    conn.channel("topology")
}

fn missing_or(url: &AmqpUrl, what: String, e: amiquip::Error) -> BrokerError {
    match e {
        amiquip::Error::ServerClosedChannel { code: 404, .. } => {
            BrokerError::TopologyMissing { what }
        }
        other => BrokerError::from_amiquip(url, &format!("failed to check {what}"), other),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Timeout,
    Parked,
    Delay,
    Retry,
}

#[derive(Debug, Clone)]
struct QueueSpec {
    name: String,
    arguments: FieldTable,
    bind: bool,
    role: Role,
}

/// Turns a 406 `PRECONDITION_FAILED` into a [`BrokerError::TopologyMismatch`].
///
/// RabbitMQ 3.10 says, e.g.: `PRECONDITION_FAILED - inequivalent arg
/// 'x-message-ttl' for queue 'queue.ordercreate' in vhost '/': received the
/// value '60000' of type 'signedint' but current is the value '1800000' of
/// type 'signedint'` (or `... but current is none`).
fn mismatch(err: BrokerError, spec: &QueueSpec, queue_type: QueueType) -> BrokerError {
    let BrokerError::Server {
        code: 406,
        ref message,
        ..
    } = err
    else {
        return err;
    };
    let Some(argument) = between(message, "inequivalent arg '", "'") else {
        return err;
    };
    let there = message
        .split_once("but current is ")
        .map_or_else(|| "(unknown)".to_owned(), |(_, rest)| describe_value(rest));
    let wanted = spec
        .arguments
        .get(argument)
        .map_or_else(|| "none".to_owned(), value_text);
    let how_to_migrate = match (spec.role, argument) {
        (Role::Delay, "x-message-ttl") => format!(
            "To change a payment window without losing messages: declare the new window as a \
             queue of its own (`order-producer declare --delay-windows ...`), move create-order and the \
             relay to it, wait until {0} is empty (`order-producer status`), then delete it \
             (`rabbitmqctl delete_queue {0}`). Or, if {0} is empty and nothing publishes now, \
             delete it and declare again.",
            spec.name
        ),
        (_, "x-queue-type") => format!(
            "To move {0} to {1} queues: stop the producers and workers, wait until it is empty, \
             delete it (`rabbitmqctl delete_queue {0}`) and declare again with --queue-type {1}; \
             or declare the new topology on a fresh vhost and move the services there.",
            spec.name,
            queue_type.as_str()
        ),
        _ => format!(
            "Wait until {0} is empty (or move its messages elsewhere), delete it \
             (`rabbitmqctl delete_queue {0}`) and declare again.",
            spec.name
        ),
    };
    BrokerError::TopologyMismatch(Box::new(Mismatch {
        queue: spec.name.clone(),
        argument: argument.to_owned(),
        there,
        wanted,
        how_to_migrate,
    }))
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

/// `the value '1800000' of type 'signedint'` -> `1800000`; `none` -> `none`.
fn describe_value(s: &str) -> String {
    between(s, "'", "'").map_or_else(|| s.trim().to_owned(), ToOwned::to_owned)
}

fn value_text(v: &AmqpValue) -> String {
    match v {
        AmqpValue::LongString(s) => s.clone(),
        AmqpValue::LongInt(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// The arguments the topology declares for each queue, as text (for
/// operators and tests).
#[must_use]
pub fn declared_arguments(topology: &Topology) -> BTreeMap<String, BTreeMap<String, String>> {
    topology
        .queue_specs()
        .into_iter()
        .map(|s| {
            let args = s
                .arguments
                .iter()
                .map(|(k, v)| (k.clone(), value_text(v)))
                .collect();
            (s.name, args)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_ladder_is_never_empty_sorted_and_clamps_at_its_longest_step() {
        assert_eq!(RetryLadder::new(&[]), Err(TopologyError::EmptyRetryLadder));
        assert!(RetryLadder::new(&[Duration::ZERO]).is_err());
        let l = RetryLadder::new(&[
            Duration::from_secs(30),
            Duration::from_secs(5),
            Duration::from_secs(30),
        ])
        .unwrap();
        assert_eq!(l.steps(), [Duration::from_secs(5), Duration::from_secs(30)]);
        assert_eq!(l.step(0), Duration::from_secs(5));
        assert_eq!(l.step(7), Duration::from_secs(30));
        assert_eq!(l.longest(), Duration::from_secs(30));
        assert_eq!(l.to_string(), "5s,30s");
        assert_eq!(RetryLadder::default().to_string(), "5s,30s,2m,10m");
        let t = Topology::single(Duration::from_mins(1), QueueType::Classic)
            .unwrap()
            .with_retry_ladder(&l)
            .unwrap();
        assert_eq!(t.retry_ladder(), l);
        assert!(Topology::single(Duration::from_mins(1), QueueType::Classic)
            .unwrap()
            .with_retry_delays(&[])
            .is_err());
    }

    #[test]
    fn labels_use_the_largest_even_unit() {
        assert_eq!(duration_label(Duration::from_mins(15)), "15m");
        assert_eq!(duration_label(Duration::from_hours(2)), "2h");
        assert_eq!(duration_label(Duration::from_secs(10)), "10s");
        assert_eq!(duration_label(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn a_retry_picks_the_longest_delay_within_the_wish() {
        let t = Topology::windows(
            &[Duration::from_mins(15), Duration::from_mins(30)],
            QueueType::Classic,
        )
        .unwrap();
        assert_eq!(
            t.retry_route(Duration::from_secs(40)).unwrap().name,
            "queue.ordertimeout.retry.30s"
        );
    }

    #[test]
    fn publish_routes_by_the_time_left_and_never_past_the_deadline() {
        let t = Topology::windows(
            &[Duration::from_secs(20), Duration::from_mins(1)],
            QueueType::Classic,
        )
        .unwrap(); // retry ladder 5s, 30s, 2m, 10m
        let name = |r: Duration| t.route_remaining(r).name().to_owned();
        // On time: the window's own queue, despite the publish lag.
        assert_eq!(name(Duration::from_millis(59_700)), "queue.ordercreate.1m");
        // Published 30 s late: the shorter delay queue.
        assert_eq!(name(Duration::from_secs(30)), "queue.ordercreate.20s");
        // Shorter than every delay queue: a retry queue that fits.
        assert_eq!(name(Duration::from_secs(12)), "queue.ordertimeout.retry.5s");
        assert!(matches!(
            t.route_remaining(Duration::from_secs(12)),
            Route::Retry(_)
        ));
        // Shorter than everything, or overdue: straight to the exchange.
        assert_eq!(name(Duration::from_secs(3)), EXCHANGE);
        assert_eq!(t.route_remaining(Duration::ZERO), Route::Now);
        assert_eq!(Route::Now.target(), (EXCHANGE, ""));
    }

    #[test]
    fn a_window_shorter_than_every_delay_queue_is_refused_naming_what_can_be_served() {
        let t = Topology::single(Duration::from_secs(20), QueueType::Classic).unwrap();
        let err = t
            .check_window(Duration::from_secs(3))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a payment window of 3s cannot be served")
                && err.contains("windows of 20s or longer can be served")
                && err.contains("queue.ordercreate (20s)")
                && err.contains("add a delay queue of 3s or less to DELAY_WINDOWS"),
            "{err}"
        );
        assert!(t.check_window(Duration::from_secs(20)).is_ok());
        assert!(t.check_window(Duration::from_mins(15)).is_ok());
        // No window given: the longest delay queue's, checked like any.
        assert_eq!(t.window_or_default(None), Ok(Duration::from_secs(20)));
        assert_eq!(
            t.window_or_default(Some(Duration::from_mins(1))),
            Ok(Duration::from_mins(1))
        );
        assert!(t.window_or_default(Some(Duration::from_secs(3))).is_err());
    }

    #[test]
    fn quorum_mode_asks_for_at_least_once_dead_lettering() {
        let t = Topology::single(Duration::from_mins(1), QueueType::Quorum).unwrap();
        let args = declared_arguments(&t);
        let delay = &args["queue.ordercreate"];
        assert_eq!(delay["x-queue-type"], "quorum");
        assert_eq!(delay["x-dead-letter-strategy"], "at-least-once");
        assert_eq!(delay["x-overflow"], "reject-publish");
        assert_eq!(delay["x-message-ttl"], "60000");
        assert_eq!(delay["x-dead-letter-exchange"], "exchange.ordertimeout");
        assert_eq!(args["queue.ordertimeout"]["x-queue-type"], "quorum");
        let classic =
            declared_arguments(&Topology::single(DEFAULT_TTL, QueueType::Classic).unwrap());
        assert!(classic["queue.ordertimeout"].is_empty());
        assert!(!classic["queue.ordercreate"].contains_key("x-queue-type"));
    }

    #[test]
    fn absurd_delays_are_refused() {
        assert!(Topology::single(Duration::ZERO, QueueType::Classic).is_err());
        assert!(Topology::single(Duration::from_hours(720), QueueType::Classic).is_err());
        assert!(Topology::windows(&[], QueueType::Classic).is_err());
    }

    #[test]
    fn refusals_say_what_they_said_as_strings() {
        // clap, the API and the docs show these texts: typed, they read the same.
        let text = |e: TopologyError| e.to_string();
        assert_eq!(
            text(QueueType::parse("fast").unwrap_err()),
            "unknown queue type \"fast\"; use classic or quorum"
        );
        assert_eq!("quorum".parse::<QueueType>(), Ok(QueueType::Quorum));
        assert_eq!(
            text(RetryLadder::new(&[]).unwrap_err()),
            "the retry ladder (RETRY_DELAYS) needs at least one delay, e.g. 5s,30s,2m,10m"
        );
        assert_eq!(
            text(RetryLadder::new(&[Duration::ZERO]).unwrap_err()),
            "a retry delay must be from 1 ms to 2147483647 ms (about 24.8 days), got 0 ms"
        );
        assert_eq!(
            text(Topology::windows(&[], QueueType::Classic).unwrap_err()),
            "at least one payment window is needed"
        );
        assert_eq!(
            text(Topology::single(Duration::ZERO, QueueType::Classic).unwrap_err()),
            "queue.ordercreate: a delay must be from 1 ms to 2147483647 ms (about 24.8 days), got 0 ms"
        );
        let t = Topology::windows(
            &[Duration::from_secs(20), Duration::from_mins(1)],
            QueueType::Classic,
        )
        .unwrap();
        assert_eq!(
            text(
                t.window_or_default(Some(Duration::from_secs(3)))
                    .unwrap_err()
            ),
            "a payment window of 3s cannot be served: the shortest delay queue holds messages \
             20s; windows of 20s or longer can be served (delay queues: queue.ordercreate.20s \
             (20s), queue.ordercreate.1m (1m)); choose a longer window, or add a delay queue \
             of 3s or less to DELAY_WINDOWS in the settings of every process and run \
             `order-producer declare` (docs/operations.md, \"Changing the payment window\")"
        );
    }

    #[test]
    fn a_406_becomes_a_mismatch_naming_both_values() {
        let t = Topology::single(Duration::from_mins(1), QueueType::Classic).unwrap();
        let spec = t
            .queue_specs()
            .into_iter()
            .find(|s| s.name == DELAY_QUEUE)
            .unwrap();
        let err = BrokerError::Server {
            context: "x".into(),
            code: 406,
            message: "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue \
                      'queue.ordercreate' in vhost '/': received the value '60000' of type \
                      'signedint' but current is the value '1800000' of type 'signedint'"
                .into(),
        };
        match mismatch(err, &spec, QueueType::Classic) {
            BrokerError::TopologyMismatch(m) => {
                let Mismatch {
                    queue,
                    argument,
                    there,
                    wanted,
                    how_to_migrate,
                } = *m;
                assert_eq!(
                    (queue.as_str(), argument.as_str()),
                    ("queue.ordercreate", "x-message-ttl")
                );
                assert_eq!((there.as_str(), wanted.as_str()), ("1800000", "60000"));
                assert!(how_to_migrate.contains("--delay-windows"));
            }
            other => panic!("{other:?}"),
        }
    }
}
