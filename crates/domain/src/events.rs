//! The audit trail of orders, `order_events`: the one way a row goes in
//! (`record_event`, inside the transaction of the change it records) and
//! the read. The table rejects UPDATE and DELETE (invariant 5).
//!
//! It sits below every module that writes events (orders, refunds,
//! followup, decisions, reconcile) and uses none of them. The hot paths'
//! single statements ([`crate::orders`]) write their event in the same
//! statement instead.

use diesel::prelude::*;

use crate::error::StoreError;
use crate::models::{EventRow, NewEventRow, OrderEvent};
use crate::order_no::OrderNo;
use crate::schema::{order_events, orders};

/// Appends an event of `kind` with `detail` to the order's trail.
pub(crate) fn record_event(
    conn: &mut PgConnection,
    order_id: i64,
    kind: &str,
    detail: &str,
) -> Result<(), StoreError> {
    diesel::insert_into(order_events::table)
        .values(NewEventRow {
            order_id,
            kind,
            detail,
        })
        .execute(conn)?;
    Ok(())
}

/// The audit trail of an order, oldest first. Read-only.
pub fn order_events(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<Vec<OrderEvent>, StoreError> {
    Ok(order_events::table
        .inner_join(orders::table)
        .filter(orders::order_no.eq(order_no.as_str()))
        .order(order_events::id.asc())
        .select(EventRow::as_select())
        .load(conn)?
        .into_iter()
        .map(OrderEvent::from)
        .collect())
}
