//! An operator's decisions on the cases that wait for a human
//! (`order-producer cases ...`): each is one transaction that keeps the
//! same invariants as the automatic paths and writes a `decision` event
//! naming who decided ([`Decision::by`]) and why ([`Decision::reason`]).
//!
//! Every decision first locks the row it decides about and checks that the
//! case is still open; a case already decided (by a second run, or by
//! another operator who got there first) is refused with
//! [`StoreError::Refused`] and nothing changes. The facts a decision rests
//! on (what WeChat Pay says) are gathered by the caller beforehand: these
//! functions never take an operator's word for money.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::error::StoreError;
use crate::models::corrupt;
use crate::order_no::OrderNo;
use crate::orders::{close_unpaid, insert_payment, pay_pending, CloseOutcome, PaymentRecord};
use crate::refunds::{record_refund_status, Refund, RefundStatus};
use crate::schema::{order_events, orders, payments, refunds};
use crate::values::{Anomaly, OrderStatus};

/// Longest operator name kept (the column's check).
const MAX_BY: usize = 64;
/// Longest reason kept.
const MAX_REASON: usize = 1000;

/// Why a decision's actor or reason is refused (the texts name the
/// commands' flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("the operator's name (--by) is empty")]
    NoActor,
    #[error("the operator's name (--by) is longer than {MAX_BY} characters")]
    ActorTooLong,
    #[error(
        "a reason (--reason) is required: say why, for whoever reads the order's events later"
    )]
    NoReason,
    #[error("the reason (--reason) is longer than {MAX_REASON} characters")]
    ReasonTooLong,
    #[error("--by and --reason may not contain control characters (newlines, tabs, ...)")]
    ControlCharacters,
}

/// Who decides and why; both are written into the `decision` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    by: String,
    reason: String,
}

impl Decision {
    /// Both must be given: `by` 1 to 64 characters, `reason` 1 to 1,000,
    /// neither blank nor with control characters (a newline would forge
    /// lines in a log or a listing).
    pub fn new(by: &str, reason: &str) -> Result<Self, DecisionError> {
        let by = by.trim();
        let reason = reason.trim();
        if by.is_empty() {
            return Err(DecisionError::NoActor);
        }
        if by.chars().count() > MAX_BY {
            return Err(DecisionError::ActorTooLong);
        }
        if reason.is_empty() {
            return Err(DecisionError::NoReason);
        }
        if reason.chars().count() > MAX_REASON {
            return Err(DecisionError::ReasonTooLong);
        }
        if by.chars().chain(reason.chars()).any(char::is_control) {
            return Err(DecisionError::ControlCharacters);
        }
        Ok(Self {
            by: by.to_owned(),
            reason: reason.to_owned(),
        })
    }

    #[must_use]
    pub fn by(&self) -> &str {
        &self.by
    }

    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

fn refused(why: impl Into<String>) -> StoreError {
    StoreError::Refused(why.into())
}

/// Writes the `decision` event: `ACTION: WHAT; reason: REASON`, by the
/// decision's operator.
pub(crate) fn record_decision(
    conn: &mut PgConnection,
    order_id: i64,
    action: &str,
    what: &str,
    decision: &Decision,
) -> Result<(), StoreError> {
    diesel::insert_into(order_events::table)
        .values((
            order_events::order_id.eq(order_id),
            order_events::kind.eq("decision"),
            order_events::detail.eq(format!("{action}: {what}; reason: {}", decision.reason)),
            order_events::actor.eq(&decision.by),
        ))
        .execute(conn)?;
    Ok(())
}

/// The order, locked, when it carries an anomaly: its id, status and
/// anomaly. Refused otherwise, saying what it is.
fn lock_anomaly(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<(i64, OrderStatus, Anomaly), StoreError> {
    let row: Option<(i64, OrderStatus, Option<String>)> = orders::table
        .filter(orders::order_no.eq(order_no.as_str()))
        .select((orders::id, orders::status, orders::anomaly))
        .for_update()
        .first(conn)
        .optional()?;
    match row {
        None => Err(refused(format!("no order {order_no}"))),
        Some((id, status, Some(anomaly))) => Ok((
            id,
            status,
            Anomaly::parse(&anomaly).map_err(|e| corrupt("orders.anomaly", e))?,
        )),
        Some((_, OrderStatus::PendingPayment, None)) => Err(refused(format!(
            "order {order_no} does not wait for a human: it is pending without an anomaly (the worker settles it at its deadline)"
        ))),
        Some((_, status, None)) => Err(refused(format!(
            "order {order_no} is already {status} and waits for no human: nothing left to decide"
        ))),
    }
}

/// The order's status and anomaly, when it waits for a human; refused
/// (nothing to decide) otherwise. A check before asking WeChat Pay.
pub fn open_anomaly(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<(OrderStatus, Anomaly), StoreError> {
    conn.transaction(|conn| lock_anomaly(conn, order_no).map(|(_, st, a)| (st, a)))
}

/// Refuses a transaction id already recorded (for this or another order):
/// one payment per transaction (invariant 2).
fn check_transaction_free(
    conn: &mut PgConnection,
    payment: &PaymentRecord,
) -> Result<(), StoreError> {
    let holder: Option<String> = payments::table
        .inner_join(orders::table)
        .filter(payments::transaction_id.eq(payment.transaction_id.as_str()))
        .select(orders::order_no)
        .first(conn)
        .optional()?;
    match holder {
        Some(other) => Err(refused(format!(
            "WeChat Pay transaction {} is already recorded for order {other}: one transaction pays one order",
            payment.transaction_id
        ))),
        None => Ok(()),
    }
}

/// Whether a payment can be accepted for an order in `status` that waits
/// for a human: only a pending one (a closed order's stock is back, a paid
/// one has its payment); refused, with what applies instead, otherwise.
pub fn acceptable(order_no: &OrderNo, status: OrderStatus) -> Result<(), StoreError> {
    match status {
        OrderStatus::PendingPayment => Ok(()),
        OrderStatus::Closed => Err(refused(format!(
            "order {order_no} is closed here and its stock given back: a payment for it can only be given back (`cases refund {order_no}`)"
        ))),
        OrderStatus::Paid => Err(refused(format!(
            "order {order_no} is already paid: another payment for it can only be given back (`cases refund {order_no}`)"
        ))),
    }
}

/// `cases accept`: the payment WeChat Pay reports for an order that needs a
/// human is genuine and right. One transaction: the order turns paid, the
/// payment is recorded as WeChat Pay reported it (its amount, even where it
/// differs from the order's total), the anomaly is cleared, a `paid` and a
/// `decision` event are written; the stock stays sold.
///
/// Refused (nothing changed): no such order, not pending with an anomaly
/// (already decided), the transaction already recorded.
pub fn accept_payment(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    payment: &PaymentRecord,
    decision: &Decision,
) -> Result<(), StoreError> {
    conn.transaction(|conn| {
        let (order_id, status, anomaly) = lock_anomaly(conn, order_no)?;
        acceptable(order_no, status)?;
        check_transaction_free(conn, payment)?;
        // The row is locked and pending: the one statement that pays a
        // pending order pays it.
        if !pay_pending(conn, order_no, payment)? {
            return Err(refused(format!("order {order_no} is no longer pending")));
        }
        record_decision(
            conn,
            order_id,
            "accept",
            &format!(
                "payment {} of {} accepted despite {anomaly}; order paid",
                payment.transaction_id, payment.amount
            ),
            decision,
        )
    })
}

/// What [`refund_payment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundQueued {
    pub out_refund_no: String,
    /// Stock given back: order lines and units.
    pub lines: usize,
    pub units: u64,
}

/// `cases refund`: the payment WeChat Pay reports for an order that needs a
/// human is to be given back. One transaction: a pending order is closed
/// and its stock given back (the same statement as every close; an order
/// already closed or paid stays as it is, its anomaly cleared), the payment is
/// recorded as one to refund (`paid_after_close`, like every payment this
/// system refunds), its full refund is queued for the worker's refund loop
/// (fixed `out_refund_no`, one per payment), and `closed`, `refund` and
/// `decision` events are written.
///
/// Refused (nothing changed): no such order, not pending with an anomaly
/// (already decided), the transaction already recorded, an amount of 0.
pub fn refund_payment(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    payment: &PaymentRecord,
    decision: &Decision,
) -> Result<RefundQueued, StoreError> {
    if payment.amount.get() == 0 {
        return Err(refused(format!(
            "WeChat Pay reports transaction {} of 0 fen: there is nothing to refund",
            payment.transaction_id
        )));
    }
    conn.transaction(|conn| {
        let (order_id, status, anomaly) = lock_anomaly(conn, order_no)?;
        check_transaction_free(conn, payment)?;
        let (lines, units) = if status == OrderStatus::PendingPayment {
            match close_unpaid(
                conn,
                order_no,
                &format!(
                    "closed by an operator's decision: payment {} ({anomaly}) refunded",
                    payment.transaction_id
                ),
                None,
            )? {
                CloseOutcome::Closed { lines, units } => (lines, units),
                // The row is locked and pending: cannot happen, but never
                // record a refund for an order this call did not close.
                other => return Err(refused(format!("order {order_no}: {other:?}"))),
            }
        } else {
            // Closed (its stock back already) or paid (this is another
            // payment): only the payment is given back. A closed order's
            // pending recheck has found what it was looking for.
            diesel::update(orders::table.find(order_id))
                .set((
                    orders::anomaly.eq(None::<String>),
                    orders::anomaly_at.eq(None::<DateTime<Utc>>),
                    orders::recheck_at.eq(None::<DateTime<Utc>>),
                    orders::updated_at.eq(Utc::now()),
                ))
                .execute(conn)?;
            (0, 0)
        };
        let payment_id = insert_payment(conn, order_id, payment, true)?;
        let out_refund_no = crate::refunds::create_refund(
            conn,
            order_id,
            order_no,
            payment_id,
            payment.amount,
            "given back by an operator's decision",
        )?;
        record_decision(
            conn,
            order_id,
            "refund",
            &if status == OrderStatus::PendingPayment {
                format!(
                    "payment {} of {} ({anomaly}) to be refunded as {out_refund_no}; order closed, {units} unit(s) of stock back",
                    payment.transaction_id, payment.amount
                )
            } else {
                format!(
                    "payment {} of {} ({anomaly}) to be refunded as {out_refund_no}; order stays {status}",
                    payment.transaction_id, payment.amount
                )
            },
            decision,
        )?;
        Ok(RefundQueued {
            out_refund_no,
            lines,
            units,
        })
    })
}

/// Writes a decision whose effect happened elsewhere (a recheck through the
/// worker's code path, a parked message replayed or dropped at the broker):
/// the event says what was done. Refused when there is no such order.
pub fn note_decision(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    action: &str,
    what: &str,
    decision: &Decision,
) -> Result<(), StoreError> {
    let order_id = crate::orders::order_id_of(conn, order_no.as_str())?
        .ok_or_else(|| refused(format!("no order {order_no}")))?;
    record_decision(conn, order_id, action, what, decision)
}

/// Ends an order's case after a recheck found it settled (WeChat Pay's
/// answer now matches what is recorded, or the worker's code path settled
/// it): the anomaly is cleared, with the `decision` event saying `what`.
/// Refused when the order carries no anomaly (already decided).
pub fn clear_anomaly(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    action: &str,
    what: &str,
    decision: &Decision,
) -> Result<(), StoreError> {
    conn.transaction(|conn| {
        let (order_id, _, _) = lock_anomaly(conn, order_no)?;
        diesel::update(orders::table.find(order_id))
            .set((
                orders::anomaly.eq(None::<String>),
                orders::anomaly_at.eq(None::<DateTime<Utc>>),
                orders::updated_at.eq(Utc::now()),
            ))
            .execute(conn)?;
        record_decision(conn, order_id, action, what, decision)
    })
}

/// The refund, locked, with its order id, when it waits for a human;
/// refused otherwise.
fn lock_parked_refund(
    conn: &mut PgConnection,
    out_refund_no: &str,
) -> Result<(i64, i64, RefundStatus), StoreError> {
    let row: Option<(i64, i64, String, Option<String>)> = refunds::table
        .filter(refunds::out_refund_no.eq(out_refund_no))
        .select((
            refunds::id,
            refunds::order_id,
            refunds::status,
            refunds::needs_human,
        ))
        .for_update()
        .first(conn)
        .optional()?;
    let Some((id, order_id, status, needs_human)) = row else {
        return Err(refused(format!("no refund {out_refund_no}")));
    };
    let status = RefundStatus::parse(&status)?;
    if needs_human.is_none() {
        return Err(refused(format!(
            "refund {out_refund_no} does not wait for a human (it is {status}{}): nothing left to decide",
            if status.is_final() {
                ""
            } else {
                ", the worker follows it"
            }
        )));
    }
    Ok((id, order_id, status))
}

/// The refund, when it waits for a human; refused otherwise. Read-only: a
/// check before asking WeChat Pay.
pub fn parked_refund(conn: &mut PgConnection, out_refund_no: &str) -> Result<Refund, StoreError> {
    conn.transaction(|conn| {
        lock_parked_refund(conn, out_refund_no)?;
        crate::refunds::find_refund(conn, out_refund_no)?
            .ok_or_else(|| refused(format!("no refund {out_refund_no}")))
    })
}

/// `cases retry-refund`: a refund WeChat Pay refused (`NOT_ENOUGH`, say)
/// is to be asked for again, with the same `out_refund_no`, once the cause
/// is fixed. One transaction: it leaves the human's list and is due now
/// (the worker's refund loop, or the caller through [`claim_refund`], asks
/// next), with a `decision` event.
///
/// Refused (nothing changed): unknown, not waiting for a human (already
/// decided), or `ABNORMAL` (asking again cannot change that: it is settled
/// in the merchant platform, then confirmed with [`confirm_refund`]).
pub fn reopen_refund(
    conn: &mut PgConnection,
    out_refund_no: &str,
    decision: &Decision,
) -> Result<(), StoreError> {
    conn.transaction(|conn| {
        let (id, order_id, status) = lock_parked_refund(conn, out_refund_no)?;
        if status == RefundStatus::Abnormal {
            return Err(refused(format!(
                "refund {out_refund_no} is ABNORMAL at WeChat Pay: asking again cannot change that; \
                 send it to the buyer through the merchant platform's abnormal-refund flow, then run \
                 `order-producer cases refund-done {out_refund_no}`"
            )));
        }
        if status.is_final() {
            return Err(refused(format!(
                "refund {out_refund_no} is already {status}"
            )));
        }
        let now = Utc::now();
        diesel::update(refunds::table.find(id))
            .set((
                refunds::needs_human.eq(None::<String>),
                refunds::next_attempt_at.eq(now),
                refunds::attempts.eq(0),
                refunds::updated_at.eq(now),
            ))
            .execute(conn)?;
        record_decision(
            conn,
            order_id,
            "retry-refund",
            &format!("refund {out_refund_no} ({status}) to be asked for again"),
            decision,
        )
    })
}

/// Claims one refund that is due, like [`crate::claim_due_refunds`] does
/// for the worker (the same lease): `None` when it is not due or another
/// process holds it. For an operator's `cases retry-refund`, which asks at
/// once rather than waiting for the worker's next pass.
pub fn claim_refund(
    conn: &mut PgConnection,
    out_refund_no: &str,
    now: DateTime<Utc>,
    lease: Duration,
) -> Result<Option<Refund>, StoreError> {
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    conn.transaction(|conn| {
        let id: Option<i64> = refunds::table
            .filter(refunds::out_refund_no.eq(out_refund_no))
            .filter(refunds::status.eq_any(["requested", "processing"]))
            .filter(refunds::needs_human.is_null())
            .filter(refunds::next_attempt_at.le(now))
            .select(refunds::id)
            .for_update()
            .skip_locked()
            .first(conn)
            .optional()?;
        let Some(id) = id else {
            return Ok(None);
        };
        diesel::update(refunds::table.find(id))
            .set((
                refunds::next_attempt_at.eq(now + lease),
                refunds::attempts.eq(refunds::attempts + 1),
                refunds::updated_at.eq(now),
            ))
            .execute(conn)?;
        crate::refunds::find_refund(conn, out_refund_no)
    })
}

/// `cases refund-done`: WeChat Pay, asked by the caller, says the refund
/// succeeded (an `ABNORMAL` refund sent on through the merchant platform,
/// say). One transaction: the refund is recorded `succeeded` (with WeChat
/// Pay's `refund_id`), leaves the human's list, and a `refund` and a
/// `decision` event are written. The caller must have WeChat Pay's `SUCCESS`
/// for this `out_refund_no` and amount: never the operator's word alone.
///
/// Refused (nothing changed): unknown, or not waiting for a human (already
/// decided).
pub fn confirm_refund(
    conn: &mut PgConnection,
    out_refund_no: &str,
    refund_id: Option<&str>,
    decision: &Decision,
) -> Result<(), StoreError> {
    conn.transaction(|conn| {
        let (id, order_id, status) = lock_parked_refund(conn, out_refund_no)?;
        let now = Utc::now();
        // Forward only, with its own `refund` event (a refund already
        // recorded succeeded but parked for another reason stays so).
        let _ = record_refund_status(conn, out_refund_no, RefundStatus::Succeeded, refund_id, now)?;
        diesel::update(refunds::table.find(id))
            .set((
                refunds::needs_human.eq(None::<String>),
                refunds::updated_at.eq(now),
            ))
            .execute(conn)?;
        record_decision(
            conn,
            order_id,
            "refund-done",
            &format!(
                "refund {out_refund_no} ({status}) confirmed SUCCESS by WeChat Pay; recorded succeeded"
            ),
            decision,
        )
    })
}
