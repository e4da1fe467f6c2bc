//! Settling one order: the worker's state machine (design brief, "Settling
//! one order"). One call does one unit of work and returns a [`Settlement`];
//! the consumer, the sweep and `settle ORDER_NO` decide what to do with it.
//!
//! The rules that make it safe:
//!
//! * stock goes back only through `domain::close_unpaid` (or the same close
//!   in a statement shared with other lanes' closes, `domain::close_batch`),
//!   called only after WeChat Pay said the payment order is closed
//!   (`CLOSED`/`REVOKED`, read back after our own close) or never existed
//!   (`ORDER_NOT_EXIST`); every other answer, and every answer that cannot
//!   be verified, leaves the order pending (ARCHITECTURE.md, invariant 7);
//! * a paid answer is recorded only when it matches the order: transaction
//!   id present and not recorded for another order, total equal to the
//!   order's, currency CNY, a readable success time. Anything else is an
//!   anomaly: recorded on the order for a human, nothing paid, nothing closed,
//!   stock held (invariant 11);
//! * a close on `ORDER_NOT_EXIST` schedules one recheck: a payment order
//!   created later (a stale checkout page) is closed at WeChat Pay, or, if it
//!   was paid, recorded as paid after close (invariant 13).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::payments::Recorded;
use crate::Metrics;
use chrono::{DateTime, Utc};
use domain::close_batch::{CloseBatcher, DEFAULT_MAX_BATCH};
use domain::{Anomaly, CloseOutcome, Order, OrderNo, OrderStatus, PgPool, StoreError};
use payment_client::{QueryOutcome, TradeState, Transaction};

/// How long after a close on `ORDER_NOT_EXIST` the recheck looks again.
pub const DEFAULT_RECHECK_AFTER: Duration = Duration::from_mins(10);

/// What became of one settlement attempt, in one word: the `outcome` label
/// of `order_timeout_settlements_total`, the `outcome` key of the log line,
/// the word `settle ORDER_NO` prints, and what the summary line counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Closed here, stock given back.
    Closed,
    /// Paid at WeChat Pay after all: compensated.
    Paid,
    /// Paid at WeChat Pay, closed here: recorded for a refund.
    PaidAfterClose,
    /// The recheck of a closed order found nothing to record.
    Rechecked,
    /// Already paid or closed: nothing to do.
    AlreadySettled,
    /// Came before its deadline: waits out the rest.
    NotYetDue,
    /// Payment state unknown: looked at again later.
    Retry,
    /// Given up on: parked for a human (poison, unknown order, permanent
    /// error, retries used up).
    Parked,
    /// WeChat Pay's answer does not match the order: needs a human.
    Anomaly,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Closed,
        Outcome::Paid,
        Outcome::PaidAfterClose,
        Outcome::Rechecked,
        Outcome::AlreadySettled,
        Outcome::NotYetDue,
        Outcome::Retry,
        Outcome::Parked,
        Outcome::Anomaly,
    ];

    /// The word for it (`closed`, `paid_after_close`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Paid => "paid",
            Self::PaidAfterClose => "paid_after_close",
            Self::Rechecked => "rechecked",
            Self::AlreadySettled => "already_settled",
            Self::NotYetDue => "not_yet_due",
            Self::Retry => "retry",
            Self::Parked => "parked",
            Self::Anomaly => "anomaly",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who asked for the settlement (the `trigger` label of the settlement
/// metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A dead-lettered delay message (or a retry of one).
    Message,
    /// The recheck of an order closed on `ORDER_NOT_EXIST` (a message marked
    /// `x-ot-recheck`, or the sweep finding the recheck overdue).
    Recheck,
    /// The periodic sweep of long-overdue pending orders.
    Sweep,
    /// An operator (`order-timeout-worker settle ORDER_NO`). On an order
    /// closed here it also rechecks WeChat Pay, like [`Trigger::Recheck`].
    Operator,
}

impl Trigger {
    pub const ALL: [Trigger; 4] = [
        Trigger::Message,
        Trigger::Recheck,
        Trigger::Sweep,
        Trigger::Operator,
    ];

    /// The word for it (`message`, `recheck`, `sweep`, `operator`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Recheck => "recheck",
            Self::Sweep => "sweep",
            Self::Operator => "operator",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one settlement attempt found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Unpaid: closed here and its stock given back; `why` says what WeChat
    /// Pay answered that made it safe. `recheck_after` is set when the close
    /// rests on `ORDER_NOT_EXIST`: one recheck is due that much later.
    Closed {
        why: &'static str,
        recheck_after: Option<Duration>,
    },
    /// Paid at WeChat Pay after all: marked paid, payment recorded, stock
    /// stays sold. `refunded` when WeChat already shows a refund.
    Compensated { refunded: bool },
    /// Paid at WeChat Pay, but the order had been closed here: the payment
    /// is recorded for a refund (invariant 2). `newly_recorded` is false
    /// when this payment was on record already (a repeat: nothing changed).
    PaidAfterClose { newly_recorded: bool },
    /// The recheck of a closed order is done and found no payment; `found`
    /// says what it saw (and whether it closed a payment order created after
    /// our close).
    Rechecked { found: &'static str },
    /// Nothing to do: already paid or closed.
    AlreadySettled(OrderStatus),
    /// Its payment deadline (or its recheck) is still ahead.
    NotYetDue { remaining: Duration },
    /// No such order here.
    UnknownOrder,
    /// WeChat Pay's answer does not match the order: recorded on the order
    /// for a human; nothing paid, nothing closed, stock held.
    NeedsHuman { anomaly: Anomaly, detail: String },
    /// The payment state is unknown or a step failed in a way that may pass:
    /// nothing was changed; look again later (not before `not_before`).
    RetryLater {
        reason: String,
        not_before: Option<Duration>,
        user_paying: bool,
    },
    /// Cannot be settled automatically (a permanent error from WeChat Pay, a
    /// nonsensical answer): nothing was changed; a human must look.
    GiveUp { reason: String },
}

impl Settlement {
    /// The metrics outcome of this attempt on its own; the consumer turns it
    /// into `parked` when the message is parked (retries used up).
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Closed { .. } => Outcome::Closed,
            Self::Compensated { .. } => Outcome::Paid,
            Self::PaidAfterClose {
                newly_recorded: true,
            } => Outcome::PaidAfterClose,
            Self::Rechecked { .. } => Outcome::Rechecked,
            // A payment after close found again: nothing new to count.
            Self::AlreadySettled(_)
            | Self::PaidAfterClose {
                newly_recorded: false,
            } => Outcome::AlreadySettled,
            Self::NotYetDue { .. } => Outcome::NotYetDue,
            Self::UnknownOrder | Self::GiveUp { .. } => Outcome::Parked,
            Self::NeedsHuman { .. } => Outcome::Anomaly,
            Self::RetryLater { .. } => Outcome::Retry,
        }
    }

    /// The log line of one attempt: the order, the settlement in words,
    /// the attempt and how long it took; key-values `order_no`, `outcome`
    /// (as counted: the caller's `outcome` may differ from
    /// [`Settlement::outcome`], e.g. `parked` once retries are used up) and
    /// `attempt`. What needs a human is an error, what will be tried again
    /// a warning.
    pub fn log(&self, order_no: &OrderNo, outcome: Outcome, attempt: u32, elapsed: Duration) {
        let level = match self {
            Self::PaidAfterClose {
                newly_recorded: true,
            }
            | Self::NeedsHuman { .. }
            | Self::GiveUp { .. } => log::Level::Error,
            Self::UnknownOrder | Self::RetryLater { .. } => log::Level::Warn,
            _ => log::Level::Info,
        };
        log::log!(
            level,
            order_no:% = order_no,
            outcome:% = outcome,
            attempt = attempt;
            "order {order_no}: {self}; attempt {attempt}, {} ms",
            elapsed.as_millis()
        );
    }

    /// True when the order has reached (or already had) its final state.
    #[must_use]
    pub fn is_final(&self) -> bool {
        match self {
            Self::Closed { .. }
            | Self::Compensated { .. }
            | Self::PaidAfterClose { .. }
            | Self::Rechecked { .. }
            | Self::AlreadySettled(_) => true,
            Self::NotYetDue { .. }
            | Self::UnknownOrder
            | Self::NeedsHuman { .. }
            | Self::RetryLater { .. }
            | Self::GiveUp { .. } => false,
        }
    }

    fn retry(reason: impl Into<String>) -> Self {
        Self::RetryLater {
            reason: reason.into(),
            not_before: None,
            user_paying: false,
        }
    }

    fn from_payment_error(context: &str, e: &payment_client::Error) -> Self {
        if e.is_transient() {
            Self::RetryLater {
                reason: format!("{context}: {e}"),
                not_before: e.retry_after(),
                user_paying: false,
            }
        } else {
            Self::GiveUp {
                reason: format!("{context}: {e}"),
            }
        }
    }

    fn from_store_error(context: &str, e: &StoreError) -> Self {
        // Database trouble never loses or corrupts anything (nothing was
        // committed); the order is simply looked at again later.
        Self::retry(format!("{context}: {e}"))
    }
}

/// The settlement in words: what was found and what was done. The one
/// rendering, for the log line of each attempt, `settle ORDER_NO` and
/// `cases recheck`.
impl fmt::Display for Settlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed { why, recheck_after } => {
                write!(f, "closed, stock given back: {why}")?;
                match recheck_after {
                    Some(d) => write!(
                        f,
                        " (a recheck is due in {} s; the sweep does it if no worker does)",
                        d.as_secs()
                    ),
                    None => Ok(()),
                }
            }
            Self::Compensated { refunded: false } => {
                f.write_str("paid at WeChat Pay: marked paid, payment recorded")
            }
            Self::Compensated { refunded: true } => f.write_str(
                "paid and refunded at WeChat Pay: marked paid, payment recorded; check the refund",
            ),
            Self::PaidAfterClose {
                newly_recorded: true,
            } => f.write_str("PAID AFTER CLOSE: payment recorded for refund"),
            Self::PaidAfterClose {
                newly_recorded: false,
            } => f.write_str("paid after close, already recorded: nothing new recorded"),
            Self::Rechecked { found } => write!(f, "closed here; rechecked at WeChat Pay: {found}"),
            Self::AlreadySettled(st) => write!(f, "already {st}: nothing to do"),
            Self::NotYetDue { remaining } => write!(
                f,
                "not settled: its payment deadline is {} ms away",
                remaining.as_millis()
            ),
            Self::UnknownOrder => f.write_str("not settled: no such order"),
            Self::NeedsHuman { anomaly, detail } => write!(
                f,
                "NOT SETTLED, NEEDS A HUMAN ({anomaly}): {detail}; nothing paid, nothing closed, stock held"
            ),
            Self::RetryLater { reason, .. } => {
                write!(f, "not settled, payment state unknown: {reason}; try again later")
            }
            Self::GiveUp { reason } => write!(f, "not settled: {reason}"),
        }
    }
}

/// Settles orders; cheap to clone and share between threads.
#[derive(Debug, Clone)]
pub struct Settler {
    pool: PgPool,
    /// Local closes go through it: lanes closing at the same time share a
    /// statement (`domain::close_batch`).
    closer: Arc<CloseBatcher>,
    payments: Arc<payment_client::Client>,
    recheck_after: Duration,
    metrics: Metrics,
}

impl Settler {
    #[must_use]
    pub fn new(pool: PgPool, payments: Arc<payment_client::Client>) -> Self {
        Self {
            closer: Arc::new(CloseBatcher::new(
                pool.clone(),
                usize::from(DEFAULT_MAX_BATCH),
            )),
            pool,
            payments,
            recheck_after: DEFAULT_RECHECK_AFTER,
            metrics: Metrics::disabled(),
        }
    }

    /// Where settlements are counted (the settlement lag; the consumer
    /// counts outcomes). Give the payment client the same handle as its
    /// observer for the WeChat Pay request metrics.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// At most `max` local closes per statement (1: each alone).
    #[must_use]
    pub fn with_close_batch(mut self, max: usize) -> Self {
        self.closer = Arc::new(CloseBatcher::new(self.pool.clone(), max));
        self
    }

    /// Statements that closed orders here so far, and the closes they
    /// carried (more closes than statements: lanes shared them).
    #[must_use]
    pub fn close_batches(&self) -> (u64, u64) {
        self.closer.batches()
    }

    #[must_use]
    pub fn payments(&self) -> &payment_client::Client {
        &self.payments
    }

    /// How long after a close on `ORDER_NOT_EXIST` its recheck is due.
    #[must_use]
    pub fn with_recheck_after(mut self, d: Duration) -> Self {
        self.recheck_after = d;
        self
    }

    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// One settlement attempt of `order_no`, at `now`. Never panics, never
    /// fails: every problem is a [`Settlement`] the caller acts on. The
    /// database connection is not held during calls to WeChat Pay.
    #[must_use]
    pub fn settle(&self, order_no: &OrderNo, trigger: Trigger, now: DateTime<Utc>) -> Settlement {
        let order = match self.load(order_no) {
            Ok(Some(order)) => order,
            Ok(None) => return Settlement::UnknownOrder,
            Err(e) => return Settlement::from_store_error("could not read the order", &e),
        };
        match (order.status, trigger) {
            (OrderStatus::Paid, _) => Settlement::AlreadySettled(OrderStatus::Paid),
            (OrderStatus::Closed, Trigger::Operator) => self.recheck_closed(&order),
            (OrderStatus::Closed, Trigger::Recheck) => match order.recheck_at {
                // Done already (a duplicate recheck message): nothing to do.
                None => Settlement::AlreadySettled(OrderStatus::Closed),
                Some(at) if at > now => Settlement::NotYetDue {
                    remaining: (at - now).to_std().unwrap_or(Duration::ZERO),
                },
                Some(_) => self.recheck_closed(&order),
            },
            (OrderStatus::Closed, Trigger::Message | Trigger::Sweep) => {
                Settlement::AlreadySettled(OrderStatus::Closed)
            }
            (OrderStatus::PendingPayment, _) => self.settle_pending(&order, now),
        }
    }

    fn settle_pending(&self, order: &Order, now: DateTime<Utc>) -> Settlement {
        if order.deadline > now {
            let remaining = (order.deadline - now).to_std().unwrap_or(Duration::ZERO);
            return Settlement::NotYetDue { remaining };
        }
        let tx = match self.payments.query_by_out_trade_no(order.order_no.as_str()) {
            Ok(QueryOutcome::NotFound) => {
                return self.close_locally(
                    order,
                    "no payment order at WeChat Pay (ORDER_NOT_EXIST)",
                    true,
                )
            }
            Ok(QueryOutcome::Found(tx)) => tx,
            Err(e) => return Settlement::from_payment_error("query at WeChat Pay failed", &e),
        };
        match tx.trade_state {
            TradeState::Success => self.compensate(order, &tx, false),
            TradeState::Refund => self.compensate(order, &tx, true),
            TradeState::Closed => self.close_locally(order, "closed at WeChat Pay (CLOSED)", false),
            TradeState::Revoked => {
                self.close_locally(order, "revoked at WeChat Pay (REVOKED)", false)
            }
            TradeState::UserPaying => Settlement::RetryLater {
                reason: "the buyer is paying right now (USERPAYING)".into(),
                not_before: None,
                user_paying: true,
            },
            TradeState::NotPay | TradeState::PayError => self.close_remote_then_local(order),
        }
    }

    fn load(&self, order_no: &OrderNo) -> Result<Option<Order>, StoreError> {
        let mut conn = self.conn()?;
        domain::find_order(&mut conn, order_no)
    }

    fn conn(&self) -> Result<domain::PooledConnection, StoreError> {
        domain::checkout(&self.pool)
    }

    /// Closes the payment order at WeChat Pay and reads it back. `Ok(tx)` is
    /// the transaction as read after a 204; anything else is the settlement
    /// to return (the state is not known to be closed).
    fn close_remote_and_read_back(&self, order: &Order) -> Result<Transaction, Settlement> {
        let no = order.order_no.as_str();
        match self.payments.close(no) {
            Ok(payment_client::CloseAnswer::Closed) => {}
            Ok(payment_client::CloseAnswer::UserPaying) => {
                return Err(Settlement::RetryLater {
                    reason: "close at WeChat Pay answered USER_PAYING".into(),
                    not_before: None,
                    user_paying: true,
                })
            }
            // Whatever close says (even a permanent 4xx such as "already
            // paid"), the truth is in the next query: never close here on it.
            Err(e) => {
                return Err(Settlement::RetryLater {
                    reason: format!("close at WeChat Pay failed: {e}"),
                    not_before: e.retry_after(),
                    user_paying: false,
                })
            }
        }
        match self.payments.query_by_out_trade_no(no) {
            Ok(QueryOutcome::Found(tx)) => Ok(tx),
            Ok(QueryOutcome::NotFound) => Err(Settlement::retry(
                "close at WeChat Pay answered 204 but the payment order now reads ORDER_NOT_EXIST",
            )),
            Err(e) => Err(Settlement::from_payment_error(
                "query after close failed",
                &e,
            )),
        }
    }

    /// Unpaid at WeChat Pay: close there, then read back. Only `CLOSED`
    /// read back lets the stock go: a 204 from close is no proof that
    /// nothing was paid.
    fn close_remote_then_local(&self, order: &Order) -> Settlement {
        let tx = match self.close_remote_and_read_back(order) {
            Ok(tx) => tx,
            Err(s) => return s,
        };
        match tx.trade_state {
            TradeState::Closed | TradeState::Revoked => {
                self.close_locally(order, "closed at WeChat Pay and read back CLOSED", false)
            }
            // Paid between our query and our close.
            TradeState::Success => self.compensate(order, &tx, false),
            TradeState::Refund => self.compensate(order, &tx, true),
            state @ (TradeState::NotPay | TradeState::UserPaying | TradeState::PayError) => {
                Settlement::retry(format!(
                    "close at WeChat Pay answered 204 but the order still reads {}",
                    state.as_str()
                ))
            }
        }
    }

    fn close_locally(&self, order: &Order, why: &'static str, recheck: bool) -> Settlement {
        let recheck_after = recheck.then_some(self.recheck_after);
        let recheck_at = recheck_after
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| Utc::now() + d);
        match self.closer.close(&order.order_no, why, recheck_at) {
            Ok(CloseOutcome::Closed { .. }) => {
                self.metrics.settlement_lag(Utc::now() - order.deadline);
                Settlement::Closed { why, recheck_after }
            }
            Ok(CloseOutcome::AlreadyClosed) => Settlement::AlreadySettled(OrderStatus::Closed),
            Ok(CloseOutcome::AlreadyPaid) => Settlement::AlreadySettled(OrderStatus::Paid),
            Ok(CloseOutcome::NotFound) => Settlement::UnknownOrder,
            Err(e) => Settlement::from_store_error("closing the order failed", &e),
        }
    }

    fn compensate(&self, order: &Order, tx: &Transaction, refunded: bool) -> Settlement {
        let recorded = self
            .conn()
            .and_then(|mut c| crate::payments::record_payment(&mut c, order, tx));
        match recorded {
            Ok(Recorded::Paid) => {
                // Said only when it is so: a refund of a payment after close
                // is our own, and that order stays closed.
                if refunded {
                    log::warn!(
                        order_no:% = order.order_no;
                        "order {}: WeChat Pay reports it paid and then refunded (REFUND); recorded as paid, check the refund",
                        order.order_no
                    );
                }
                self.metrics.settlement_lag(Utc::now() - order.deadline);
                Settlement::Compensated { refunded }
            }
            Ok(Recorded::AlreadyPaid) => Settlement::AlreadySettled(OrderStatus::Paid),
            Ok(Recorded::PaidAfterClose { newly_recorded }) => {
                Settlement::PaidAfterClose { newly_recorded }
            }
            Ok(Recorded::NeedsHuman { anomaly, detail }) => {
                Settlement::NeedsHuman { anomaly, detail }
            }
            Ok(Recorded::NotFound) => Settlement::UnknownOrder,
            Err(e) => Settlement::from_store_error("recording the payment failed", &e),
        }
    }

    /// A closed order's recheck (and the operator's look at a closed order):
    /// a payment order created at WeChat Pay after our close is closed there
    /// so it can never be paid; a payment found is recorded as paid after
    /// close; nothing there ends the recheck.
    fn recheck_closed(&self, order: &Order) -> Settlement {
        let tx = match self.payments.query_by_out_trade_no(order.order_no.as_str()) {
            Ok(QueryOutcome::NotFound) => {
                return self.finish_recheck(order, "still no payment order at WeChat Pay")
            }
            Ok(QueryOutcome::Found(tx)) => tx,
            Err(e) => return Settlement::from_payment_error("query at WeChat Pay failed", &e),
        };
        match tx.trade_state {
            // The order is closed here: this records a payment after close.
            TradeState::Success => self.compensate(order, &tx, false),
            TradeState::Refund => self.compensate(order, &tx, true),
            TradeState::Closed | TradeState::Revoked => {
                self.finish_recheck(order, "the payment order at WeChat Pay is closed")
            }
            TradeState::NotPay | TradeState::UserPaying | TradeState::PayError => {
                log::warn!(
                    order_no:% = order.order_no;
                    "order {}: a payment order ({}) exists at WeChat Pay for an order closed here; closing it there",
                    order.order_no,
                    tx.trade_state
                );
                let after = match self.close_remote_and_read_back(order) {
                    Ok(after) => after,
                    Err(s) => return s,
                };
                match after.trade_state {
                    TradeState::Closed | TradeState::Revoked => self.finish_recheck(
                        order,
                        "closed the payment order created at WeChat Pay after the close here",
                    ),
                    TradeState::Success => self.compensate(order, &after, false),
                    TradeState::Refund => self.compensate(order, &after, true),
                    state
                    @ (TradeState::NotPay | TradeState::UserPaying | TradeState::PayError) => {
                        Settlement::retry(format!(
                            "close at WeChat Pay answered 204 but the payment order still reads {}",
                            state.as_str()
                        ))
                    }
                }
            }
        }
    }

    fn finish_recheck(&self, order: &Order, found: &'static str) -> Settlement {
        match self
            .conn()
            .and_then(|mut c| domain::finish_recheck(&mut c, &order.order_no, found))
        {
            Ok(_) => Settlement::Rechecked { found },
            Err(e) => Settlement::from_store_error("recording the recheck failed", &e),
        }
    }
}
