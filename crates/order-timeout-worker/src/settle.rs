//! Settling one order: the worker's state machine (design brief, "Settling
//! one order"). One call does one unit of work and returns a [`Settlement`];
//! the consumer, the sweep and `settle ORDER_NO` decide what to do with it.
//!
//! The rule that makes it safe: stock goes back only through
//! `domain::close_unpaid`, and that is called only after WeChat Pay said the
//! payment order is closed (`CLOSED`/`REVOKED`, read back after our own
//! close) or never existed (`ORDER_NOT_EXIST`). Every other answer, and every
//! answer that cannot be verified, leaves the order pending.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{
    CloseOutcome, Fen, MarkPaidOutcome, Order, OrderNo, OrderStatus, PaymentRecord, PgPool,
    StoreError, TransactionId,
};
use payment_client::{QueryOutcome, TradeState, Transaction};

/// Who asked for the settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A dead-lettered delay message (or a retry of one).
    Message,
    /// The periodic sweep of long-overdue pending orders.
    Sweep,
    /// An operator (`order-timeout-worker settle ORDER_NO`). On an order
    /// closed here it also asks WeChat Pay again, to catch a late payment.
    Operator,
}

/// What one settlement attempt found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Unpaid: closed here and its stock given back; `why` says what WeChat
    /// Pay answered that made it safe.
    Closed { why: &'static str },
    /// Paid at WeChat Pay after all: marked paid, payment recorded, stock
    /// stays sold. `refunded` when WeChat already shows a refund.
    Compensated { refunded: bool },
    /// Paid at WeChat Pay, but the order had been closed here: the payment
    /// is recorded for a refund (invariant 4).
    PaidAfterClose,
    /// Nothing to do: already paid or closed.
    AlreadySettled(OrderStatus),
    /// Its payment deadline is still ahead.
    NotYetDue { remaining: Duration },
    /// No such order here.
    UnknownOrder,
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
    /// A short name for logs and counters.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Compensated { .. } => "compensated",
            Self::PaidAfterClose => "paid_after_close",
            Self::AlreadySettled(_) => "already_settled",
            Self::NotYetDue { .. } => "not_yet_due",
            Self::UnknownOrder => "unknown_order",
            Self::RetryLater { .. } => "retry_later",
            Self::GiveUp { .. } => "give_up",
        }
    }

    /// True when the order has reached (or already had) its final state.
    #[must_use]
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Closed { .. }
                | Self::Compensated { .. }
                | Self::PaidAfterClose
                | Self::AlreadySettled(_)
        )
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

/// Settles orders; cheap to clone and share between threads.
#[derive(Debug, Clone)]
pub struct Settler {
    pool: PgPool,
    payments: Arc<payment_client::Client>,
}

impl Settler {
    #[must_use]
    pub fn new(pool: PgPool, payments: Arc<payment_client::Client>) -> Self {
        Self { pool, payments }
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
        match order.status {
            OrderStatus::Paid => return Settlement::AlreadySettled(OrderStatus::Paid),
            OrderStatus::Closed if trigger == Trigger::Operator => {
                return self.recheck_closed(&order)
            }
            OrderStatus::Closed => return Settlement::AlreadySettled(OrderStatus::Closed),
            OrderStatus::PendingPayment => {}
        }
        if order.deadline > now {
            let remaining = (order.deadline - now).to_std().unwrap_or(Duration::ZERO);
            return Settlement::NotYetDue { remaining };
        }
        let tx = match self.payments.query_by_out_trade_no(order_no.as_str()) {
            Ok(QueryOutcome::NotFound) => {
                return self
                    .close_locally(&order, "no payment order at WeChat Pay (ORDER_NOT_EXIST)")
            }
            Ok(QueryOutcome::Found(tx)) => tx,
            Ok(other) => {
                return Settlement::GiveUp {
                    reason: format!("unexpected answer to the query: {other:?}"),
                }
            }
            Err(e) => return Settlement::from_payment_error("query at WeChat Pay failed", &e),
        };
        match tx.trade_state {
            TradeState::Success => self.compensate(&order, &tx, false),
            TradeState::Refund => self.compensate(&order, &tx, true),
            TradeState::Closed => self.close_locally(&order, "closed at WeChat Pay (CLOSED)"),
            TradeState::Revoked => self.close_locally(&order, "revoked at WeChat Pay (REVOKED)"),
            TradeState::UserPaying => Settlement::RetryLater {
                reason: "the buyer is paying right now (USERPAYING)".into(),
                not_before: None,
                user_paying: true,
            },
            TradeState::NotPay | TradeState::PayError => self.close_remote_then_local(&order),
        }
    }

    fn load(&self, order_no: &OrderNo) -> Result<Option<Order>, StoreError> {
        let mut conn = self
            .pool
            .get()
            .map_err(|e| StoreError::Connect(e.to_string()))?;
        domain::find_order(&mut conn, order_no)
    }

    /// Unpaid at WeChat Pay: close there, then read back. Only `CLOSED`
    /// read back lets the stock go: a 204 from close is no proof that
    /// nothing was paid.
    fn close_remote_then_local(&self, order: &Order) -> Settlement {
        let no = order.order_no.as_str();
        match self.payments.close(no) {
            Ok(payment_client::CloseOutcome::Closed) => {}
            Ok(payment_client::CloseOutcome::UserPaying) => {
                return Settlement::RetryLater {
                    reason: "close at WeChat Pay answered USER_PAYING".into(),
                    not_before: None,
                    user_paying: true,
                }
            }
            Ok(other) => {
                return Settlement::retry(format!("unexpected answer to close: {other:?}"))
            }
            // Whatever close says (even a permanent 4xx such as "already
            // paid"), the truth is in the next query: never close here on it.
            Err(e) => {
                return Settlement::RetryLater {
                    reason: format!("close at WeChat Pay failed: {e}"),
                    not_before: e.retry_after(),
                    user_paying: false,
                }
            }
        }
        match self.payments.query_by_out_trade_no(no) {
            Ok(QueryOutcome::Found(tx)) => match tx.trade_state {
                TradeState::Closed | TradeState::Revoked => {
                    self.close_locally(order, "closed at WeChat Pay and read back CLOSED")
                }
                // Paid between our query and our close.
                TradeState::Success => self.compensate(order, &tx, false),
                TradeState::Refund => self.compensate(order, &tx, true),
                state => Settlement::retry(format!(
                    "close at WeChat Pay answered 204 but the order still reads {}",
                    state.as_str()
                )),
            },
            Ok(other) => Settlement::retry(format!("unexpected answer after close: {other:?}")),
            Err(e) => Settlement::from_payment_error("query after close failed", &e),
        }
    }

    fn close_locally(&self, order: &Order, why: &'static str) -> Settlement {
        let mut conn = match self.pool.get() {
            Ok(c) => c,
            Err(e) => {
                return Settlement::retry(format!("no database connection to close the order: {e}"))
            }
        };
        match domain::close_unpaid(&mut conn, &order.order_no, why) {
            Ok(CloseOutcome::Closed { .. }) => Settlement::Closed { why },
            Ok(CloseOutcome::AlreadyClosed) => Settlement::AlreadySettled(OrderStatus::Closed),
            Ok(CloseOutcome::AlreadyPaid) => Settlement::AlreadySettled(OrderStatus::Paid),
            Ok(CloseOutcome::NotFound) => Settlement::UnknownOrder,
            Err(e) => Settlement::from_store_error("closing the order failed", &e),
        }
    }

    fn compensate(&self, order: &Order, tx: &Transaction, refunded: bool) -> Settlement {
        let payment = match payment_record(order, tx) {
            Ok(p) => p,
            Err(reason) => return Settlement::GiveUp { reason },
        };
        if refunded {
            log::warn!(
                "order {}: WeChat Pay reports it paid and then refunded (REFUND); recorded as paid, check the refund",
                order.order_no
            );
        }
        let mut conn = match self.pool.get() {
            Ok(c) => c,
            Err(e) => {
                return Settlement::retry(format!(
                    "no database connection to record the payment: {e}"
                ))
            }
        };
        match domain::mark_paid(&mut conn, &order.order_no, &payment) {
            Ok(MarkPaidOutcome::Paid) => Settlement::Compensated { refunded },
            Ok(MarkPaidOutcome::AlreadyPaid) => Settlement::AlreadySettled(OrderStatus::Paid),
            Ok(MarkPaidOutcome::PaidAfterClose { .. }) => {
                log::error!(
                    "order {}: PAID AFTER CLOSE: WeChat Pay transaction {} ({}) for an order closed here; refund it",
                    order.order_no,
                    payment.transaction_id,
                    payment.amount
                );
                Settlement::PaidAfterClose
            }
            Ok(MarkPaidOutcome::NotFound) => Settlement::UnknownOrder,
            Err(e) => Settlement::from_store_error("recording the payment failed", &e),
        }
    }

    /// Operator mode on an order closed here: a late payment at WeChat Pay
    /// is recorded for refund; otherwise nothing changes.
    fn recheck_closed(&self, order: &Order) -> Settlement {
        match self.payments.query_by_out_trade_no(order.order_no.as_str()) {
            Ok(QueryOutcome::Found(tx))
                if matches!(tx.trade_state, TradeState::Success | TradeState::Refund) =>
            {
                // The order is closed here: this records a payment after close.
                self.compensate(order, &tx, tx.trade_state == TradeState::Refund)
            }
            Ok(_) => Settlement::AlreadySettled(OrderStatus::Closed),
            Err(e) => Settlement::from_payment_error("query at WeChat Pay failed", &e),
        }
    }
}

/// The payment WeChat Pay reports, as the store records it.
fn payment_record(order: &Order, tx: &Transaction) -> Result<PaymentRecord, String> {
    let id = tx.transaction_id.as_deref().ok_or_else(|| {
        format!(
            "WeChat Pay reports order {} {} without a transaction_id",
            order.order_no,
            tx.trade_state.as_str()
        )
    })?;
    let transaction_id = TransactionId::parse(id)
        .map_err(|e| format!("WeChat Pay transaction_id of order {}: {e}", order.order_no))?;
    let amount = tx
        .amount
        .as_ref()
        .and_then(|a| a.total.or(a.payer_total))
        .map_or(Ok(order.total), Fen::new)
        .map_err(|e| format!("WeChat Pay amount of order {}: {e}", order.order_no))?;
    let success_time = tx
        .success_time
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
    Ok(PaymentRecord {
        transaction_id,
        amount,
        success_time,
    })
}
