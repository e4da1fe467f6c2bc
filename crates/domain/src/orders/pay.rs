//! Paying orders: the prepay recorded once, and the payment WeChat Pay
//! reports. A pending order turns paid in one statement,
//! [`PAY_PENDING_SQL`], the one text of that change (the general
//! transaction of [`mark_paid`] and `crate::decisions::accept_payment` run
//! it too); an order already closed keeps its stock closed and gets a
//! payment after close and its refund (invariants 1, 2 and 20).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamptz};

use crate::error::StoreError;
use crate::events::record_event;
use crate::models::{corrupt, NewPaymentRow};
use crate::order_no::OrderNo;
use crate::prepared::{prepared, Sql};
use crate::schema::{order_events, orders, payments};
use crate::values::{Fen, OrderStatus, TransactionId};

/// Records, once, that a payment order was created at WeChat Pay for this
/// order (a `prepay` event with `detail`); a repeated prepay of the same
/// order adds nothing. Returns whether the event was written; `NotFound`
/// when no order has this number. Status and stock are left alone.
pub fn record_prepay(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    detail: &str,
) -> Result<Option<bool>, StoreError> {
    conn.transaction(|conn| {
        // Lock the order so that two prepays racing write one event.
        let Some(order_id) = orders::table
            .filter(orders::order_no.eq(order_no.as_str()))
            .select(orders::id)
            .for_update()
            .first::<i64>(conn)
            .optional()?
        else {
            return Ok(None);
        };
        let known: bool = diesel::select(diesel::dsl::exists(
            order_events::table
                .filter(order_events::order_id.eq(order_id))
                .filter(order_events::kind.eq("prepay")),
        ))
        .get_result(conn)?;
        if known {
            return Ok(Some(false));
        }
        record_event(conn, order_id, "prepay", detail)?;
        Ok(Some(true))
    })
}

/// A payment as WeChat Pay reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub transaction_id: TransactionId,
    pub amount: Fen,
    pub success_time: DateTime<Utc>,
}

/// What [`mark_paid`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum MarkPaidOutcome {
    /// This call moved the order from pending to paid and recorded the payment.
    Paid,
    /// The order was already paid; nothing changed.
    AlreadyPaid,
    /// The order had been closed (its stock given back) and is paid after
    /// all: the payment is recorded as `paid_after_close` for a refund.
    /// `newly_recorded` is false when this payment was already on record.
    PaidAfterClose { newly_recorded: bool },
    /// This transaction id is already recorded for another order: nothing
    /// changed (the answer cannot be about this order; a human must look).
    TransactionOfAnotherOrder { other: OrderNo },
    /// No order has this number.
    NotFound,
}

/// Records that the order was paid: pending -> paid, a payment row and a
/// `paid` event, one transaction; the stock stays sold.
///
/// Repeat: `AlreadyPaid`, nothing changes. On an order already closed: the
/// payment is recorded with `paid_after_close` and a `paid_after_close` event
/// (someone must refund it), stock is left alone, its pending recheck is
/// done; a repeat finds the payment and records nothing more (invariant 2).
/// A transaction id already recorded for another order changes nothing and
/// returns `TransactionOfAnotherOrder`, also when two such calls race.
/// Moving a pending order to paid clears a recorded anomaly.
pub fn mark_paid(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    payment: &PaymentRecord,
) -> Result<MarkPaidOutcome, StoreError> {
    let first = match pay_pending(conn, order_no, payment) {
        Ok(true) => return Ok(MarkPaidOutcome::Paid),
        // Not pending (or no such order): the general path says what it is.
        Ok(false) => mark_paid_tx(conn, order_no, payment),
        Err(e) => Err(e),
    };
    match first {
        // Two orders raced to record the same transaction id: the loser's
        // insert hit the unique index and rolled back.
        Err(StoreError::Constraint { ref constraint, .. })
            if constraint == "payments_transaction_id_key" =>
        {
            match transaction_holder(conn, &payment.transaction_id)? {
                Some(other) if &other != order_no => {
                    Ok(MarkPaidOutcome::TransactionOfAnotherOrder { other })
                }
                _ => mark_paid_tx(conn, order_no, payment),
            }
        }
        other => other,
    }
}

/// The common case in one statement (atomic by itself): a pending order
/// turns paid with its payment row and `paid` event. `false` when the order
/// is not pending (or unknown): nothing changed. A transaction id recorded
/// for another order fails the whole statement on the unique index.
const PAY_PENDING_SQL: &str = "
WITH o AS (
    UPDATE orders SET status = 'paid', paid_at = $1, updated_at = $2,
                      anomaly = NULL, anomaly_at = NULL
     WHERE order_no = $3 AND status = 'pending_payment'
 RETURNING id
), p AS (
    INSERT INTO payments (order_id, transaction_id, amount_fen, success_time, paid_after_close)
    SELECT id, $4, $5, $1, false FROM o
), e AS (
    INSERT INTO order_events (order_id, kind, detail) SELECT id, 'paid', $6 FROM o
)
SELECT count(*) AS n FROM o
";

struct PayPending;

impl Sql for PayPending {
    const TEXT: &'static str = PAY_PENDING_SQL;
}

/// [`PAY_PENDING_SQL`]: true when the order was pending and is now paid;
/// false (nothing changed) when it is not pending or unknown.
pub(crate) fn pay_pending(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    payment: &PaymentRecord,
) -> Result<bool, StoreError> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let row: Count = prepared::<PayPending, _>(|q| {
        q.bind::<Timestamptz, _>(payment.success_time)
            .bind::<Timestamptz, _>(Utc::now())
            .bind::<Text, _>(order_no.as_str())
            .bind::<Text, _>(payment.transaction_id.as_str())
            .bind::<BigInt, _>(payment.amount.get())
            .bind::<Text, _>(format!(
                "transaction {}, {}",
                payment.transaction_id, payment.amount
            ))
    })
    .get_result(conn)?;
    Ok(row.n == 1)
}

/// The order a transaction id is recorded for, if any.
fn transaction_holder(
    conn: &mut PgConnection,
    transaction_id: &TransactionId,
) -> Result<Option<OrderNo>, StoreError> {
    payments::table
        .inner_join(orders::table)
        .filter(payments::transaction_id.eq(transaction_id.as_str()))
        .select(orders::order_no)
        .first::<String>(conn)
        .optional()?
        .map(|no| OrderNo::parse(&no).map_err(|e| corrupt("orders.order_no", e)))
        .transpose()
}

/// [`mark_paid`] past its first statement, in one transaction: a
/// transaction id of another order refused, a pending order paid (the same
/// statement), a closed one paid after close with its refund.
fn mark_paid_tx(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    payment: &PaymentRecord,
) -> Result<MarkPaidOutcome, StoreError> {
    conn.transaction(|conn| {
        if let Some(other) = transaction_holder(conn, &payment.transaction_id)? {
            if &other != order_no {
                return Ok(MarkPaidOutcome::TransactionOfAnotherOrder { other });
            }
        }
        if pay_pending(conn, order_no, payment)? {
            return Ok(MarkPaidOutcome::Paid);
        }
        // Not pending. Lock the order so that two reports of the same late
        // payment cannot both record it.
        let Some((order_id, status)) = orders::table
            .filter(orders::order_no.eq(order_no.as_str()))
            .select((orders::id, orders::status))
            .for_update()
            .first::<(i64, OrderStatus)>(conn)
            .optional()?
        else {
            return Ok(MarkPaidOutcome::NotFound);
        };
        match status {
            OrderStatus::Paid | OrderStatus::PendingPayment => Ok(MarkPaidOutcome::AlreadyPaid),
            OrderStatus::Closed => {
                // Whatever the recheck was looking for has been found.
                diesel::update(orders::table.find(order_id))
                    .set(orders::recheck_at.eq(None::<DateTime<Utc>>))
                    .execute(conn)?;
                let known: bool = diesel::select(diesel::dsl::exists(
                    payments::table
                        .filter(payments::order_id.eq(order_id))
                        .filter(payments::transaction_id.eq(payment.transaction_id.as_str())),
                ))
                .get_result(conn)?;
                if known {
                    return Ok(MarkPaidOutcome::PaidAfterClose {
                        newly_recorded: false,
                    });
                }
                let payment_id = insert_payment(conn, order_id, payment, true)?;
                record_event(
                    conn,
                    order_id,
                    "paid_after_close",
                    &format!(
                        "transaction {}, {}: paid after the order was closed, refund needed",
                        payment.transaction_id, payment.amount
                    ),
                )?;
                // The refund is born with the payment it gives back: it can
                // never be forgotten, and never doubled (one per payment).
                let out_refund_no = if payment.amount.get() > 0 {
                    Some(crate::refunds::create_refund(
                        conn,
                        order_id,
                        order_no,
                        payment_id,
                        payment.amount,
                        "paid after close",
                    )?)
                } else {
                    None
                };
                let refund = out_refund_no
                    .as_deref()
                    .unwrap_or("(nothing to refund: 0 fen)");
                log::warn!(
                    order_no:% = order_no,
                    outcome = "paid_after_close",
                    out_refund_no = out_refund_no.as_deref();
                    "order {order_no} was paid after it had been closed (transaction {}, {}): refund {refund} queued",
                    payment.transaction_id,
                    payment.amount
                );
                Ok(MarkPaidOutcome::PaidAfterClose {
                    newly_recorded: true,
                })
            }
        }
    })
}

/// Inserts a payment row; its id.
pub(crate) fn insert_payment(
    conn: &mut PgConnection,
    order_id: i64,
    payment: &PaymentRecord,
    paid_after_close: bool,
) -> Result<i64, StoreError> {
    Ok(diesel::insert_into(payments::table)
        .values(NewPaymentRow {
            order_id,
            transaction_id: payment.transaction_id.as_str(),
            amount_fen: payment.amount.get(),
            success_time: payment.success_time,
            paid_after_close,
        })
        .returning(payments::id)
        .get_result(conn)?)
}
