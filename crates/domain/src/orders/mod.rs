//! Orders: creation (stock reserved and the delay message queued in the
//! outbox, one transaction), and the two ways out of `pending_payment`:
//! closed unpaid (stock given back) or paid.
//!
//! Every state change is an `UPDATE ... WHERE status = 'pending_payment'`
//! that must touch exactly one row: whoever changes the row first wins, every
//! later or concurrent attempt sees zero rows and reports what the order has
//! become. That is what makes the worker's retries and duplicates harmless
//! (ARCHITECTURE.md, invariant 1).
//!
//! One module per operation: `create` (one statement), `close` (one
//! statement for one order or many), `pay` (the prepay event, and one
//! statement for a pending order, a transaction for the rest), `sweep`
//! (what the sweep pages through). This file holds the reads they share;
//! the audit trail they write is `crate::events`.

use std::collections::BTreeMap;

use diesel::prelude::*;

use crate::error::StoreError;
use crate::models::{corrupt, Order, OrderItem, OrderRow, Payment, PaymentRow};
use crate::order_no::OrderNo;
use crate::schema::{order_items, orders, payments, skus};
use crate::values::{Fen, OrderStatus, Quantity, SkuCode};

mod close;
mod create;
mod pay;
mod sweep;

pub use crate::events::order_events;
pub use close::{close_unpaid, close_unpaid_batch, CloseOutcome, CloseRequest};
pub use create::{
    create_order, create_order_idempotent, CreatedOrder, IdempotencyKey, NewOrder, OrderLine,
    MAX_PAYMENT_WINDOW,
};
pub(crate) use pay::{insert_payment, pay_pending};
pub use pay::{mark_paid, record_prepay, MarkPaidOutcome, PaymentRecord};
pub use sweep::{pending_past_deadline, rechecks_due, OverdueOrder, SweepCursor};

/// The row id of the order `order_no`, if there is one.
pub(crate) fn order_id_of(
    conn: &mut PgConnection,
    order_no: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(orders::table
        .filter(orders::order_no.eq(order_no))
        .select(orders::id)
        .first(conn)
        .optional()?)
}

/// The order with this number, or `None`. Read-only.
pub fn find_order(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<Option<Order>, StoreError> {
    orders::table
        .filter(orders::order_no.eq(order_no.as_str()))
        .select(OrderRow::as_select())
        .first(conn)
        .optional()?
        .map(Order::try_from)
        .transpose()
}

/// The lines of an order, by SKU code. Read-only.
pub fn order_items(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<Vec<OrderItem>, StoreError> {
    order_items::table
        .inner_join(orders::table)
        .inner_join(skus::table)
        .filter(orders::order_no.eq(order_no.as_str()))
        .order(skus::code.asc())
        .select((
            skus::code,
            order_items::quantity,
            order_items::unit_price_fen,
        ))
        .load::<(String, i32, i64)>(conn)?
        .into_iter()
        .map(|(code, qty, price)| {
            Ok(OrderItem {
                sku: SkuCode::parse(&code).map_err(|e| corrupt("skus.code", e))?,
                quantity: Quantity::new(qty as u32)
                    .map_err(|e| corrupt("order_items.quantity", e))?,
                unit_price: Fen::new(price)
                    .map_err(|e| corrupt("order_items.unit_price_fen", e))?,
            })
        })
        .collect()
}

/// Payments recorded for an order, oldest first. Read-only.
pub fn payments_of(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<Vec<Payment>, StoreError> {
    payments::table
        .inner_join(orders::table)
        .filter(orders::order_no.eq(order_no.as_str()))
        .order(payments::id.asc())
        .select(PaymentRow::as_select())
        .load(conn)?
        .into_iter()
        .map(Payment::try_from)
        .collect()
}

/// How many orders are in each status (statuses with none included, as 0).
/// Read-only.
pub fn count_by_status(conn: &mut PgConnection) -> Result<Vec<(OrderStatus, i64)>, StoreError> {
    let counts: BTreeMap<String, i64> = orders::table
        .group_by(orders::status)
        .select((orders::status, diesel::dsl::count_star()))
        .load::<(String, i64)>(conn)?
        .into_iter()
        .collect();
    Ok(OrderStatus::ALL
        .into_iter()
        .map(|s| (s, counts.get(s.as_str()).copied().unwrap_or(0)))
        .collect())
}

/// Number of payments recorded after their order had been closed: each one
/// needs a refund. Read-only.
pub fn paid_after_close_count(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(payments::table
        .filter(payments::paid_after_close.eq(true))
        .count()
        .get_result(conn)?)
}
