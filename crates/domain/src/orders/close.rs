//! Closing pending orders unpaid: one statement, [`CLOSE_BATCH_SQL`], for
//! one order ([`close_unpaid`], a batch of one) or many
//! ([`close_unpaid_batch`], which `crate::close_batch` feeds when many
//! expire together). Only the statement that moves an order out of
//! `pending_payment` gives its stock back (invariant 1).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};

use crate::error::StoreError;
use crate::models::corrupt;
use crate::order_no::OrderNo;
use crate::prepared::{prepared, Sql};
use crate::schema::orders;
use crate::values::OrderStatus;

/// What [`close_unpaid`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum CloseOutcome {
    /// This call closed the order and gave `units` units back over `lines` lines.
    Closed { lines: usize, units: u64 },
    /// The order was already closed; nothing changed.
    AlreadyClosed,
    /// The order is paid; nothing changed.
    AlreadyPaid,
    /// No order has this number.
    NotFound,
}

/// Closes a pending order unpaid: status `closed`, every item's stock given
/// back and a `closed` event with `reason`, all in one statement (so one
/// transaction, and one round trip).
///
/// Only the call that moves the order out of `pending_payment` gives stock
/// back (invariant 1). A repeated or concurrent call changes nothing and
/// returns `AlreadyClosed` (or `AlreadyPaid` if a payment won the race).
/// The caller must know the order is unpaid at WeChat Pay (invariant 7).
///
/// `recheck_at`, when given, schedules the order's one recheck for a payment
/// order created at WeChat Pay after this close (see
/// [`crate::finish_recheck`]); it is set in the same transaction, so a
/// closed order can never miss it. A recorded anomaly is cleared: the order
/// has left `pending_payment` on a trustworthy answer.
pub fn close_unpaid(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    reason: &str,
    recheck_at: Option<DateTime<Utc>>,
) -> Result<CloseOutcome, StoreError> {
    // The batch statement with a batch of one, not a text of its own: the
    // worker bench (docs/benchmarks.md, issue 24) gave the same orders/s
    // (medians 536 before, 531 after at 50 ms and 64 lanes, where most
    // closes run alone; none lower at latency 0), but PostgreSQL spent more
    // CPU per settled order there (0.48 -> 0.58 ms): the array form's price.
    if let Some(row) = run_close(conn, &[order_no.as_str()], &[reason], &[recheck_at])?.pop() {
        return Ok(row.outcome());
    }
    // Not pending: a second, rare statement (with a snapshot of its own, so
    // a payment that committed while the close waited for its row is seen).
    Ok(match current_status(conn, order_no)? {
        None => CloseOutcome::NotFound,
        Some(OrderStatus::Paid) => CloseOutcome::AlreadyPaid,
        // Pending cannot be seen here: the UPDATE waited for any concurrent
        // writer and re-checked the row.
        Some(OrderStatus::Closed | OrderStatus::PendingPayment) => CloseOutcome::AlreadyClosed,
    })
}

/// One close asked for: the arguments of [`close_unpaid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub order_no: OrderNo,
    pub reason: String,
    pub recheck_at: Option<DateTime<Utc>>,
}

/// Closes, in one statement, every order of `requests` that is still
/// pending (order numbers must be distinct); returns, for each order it
/// closed, its lines and units given back. Orders it did not close are
/// absent: ask [`close_unpaid`] what they are.
pub fn close_unpaid_batch(
    conn: &mut PgConnection,
    requests: &[CloseRequest],
) -> Result<HashMap<OrderNo, CloseOutcome>, StoreError> {
    let order_nos: Vec<&str> = requests.iter().map(|r| r.order_no.as_str()).collect();
    let reasons: Vec<&str> = requests.iter().map(|r| r.reason.as_str()).collect();
    let recheck_ats: Vec<Option<DateTime<Utc>>> = requests.iter().map(|r| r.recheck_at).collect();
    run_close(conn, &order_nos, &reasons, &recheck_ats)?
        .into_iter()
        .map(|row| {
            let no = OrderNo::parse(&row.order_no).map_err(|e| corrupt("orders.order_no", e))?;
            Ok((no, row.outcome()))
        })
        .collect()
}

/// The close of pending orders in one statement, atomic by itself (no
/// `BEGIN`/`COMMIT` round trips): the orders leave `pending_payment`, and
/// only those that did give their items' stock back (summed per SKU, one
/// update per SKU) and get a `closed` event. The SKU rows are locked in id
/// order first, like `create_order` locks them, so that a close and an
/// order for the same SKUs cannot deadlock (invariant 4). One row per
/// order closed.
const CLOSE_BATCH_SQL: &str = "
WITH r AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
        AS r(order_no, reason, recheck_at)
), o AS (
    UPDATE orders SET status = 'closed', closed_at = $4, updated_at = $4,
                      close_reason = r.reason, recheck_at = r.recheck_at,
                      anomaly = NULL, anomaly_at = NULL
      FROM r
     WHERE orders.order_no = r.order_no AND orders.status = 'pending_payment'
 RETURNING orders.id, orders.order_no, r.reason
), i AS (
    SELECT order_items.order_id, order_items.sku_id, order_items.quantity
      FROM order_items JOIN o ON o.id = order_items.order_id
), t AS (
    SELECT sku_id, sum(quantity)::int AS quantity FROM i GROUP BY sku_id
), l AS MATERIALIZED (
    SELECT skus.id FROM skus WHERE skus.id IN (SELECT sku_id FROM t)
     ORDER BY skus.id FOR UPDATE
), s AS (
    UPDATE skus SET stock = skus.stock + t.quantity, updated_at = $4
      FROM t WHERE skus.id = t.sku_id AND skus.id IN (SELECT id FROM l)
), e AS (
    INSERT INTO order_events (order_id, kind, detail) SELECT id, 'closed', reason FROM o
)
SELECT o.order_no, count(i.sku_id) AS lines, coalesce(sum(i.quantity), 0)::bigint AS units
  FROM o LEFT JOIN i ON i.order_id = o.id
 GROUP BY o.order_no
";

struct CloseBatch;

impl Sql for CloseBatch {
    const TEXT: &'static str = CLOSE_BATCH_SQL;
}

/// A row of [`CLOSE_BATCH_SQL`]: an order it closed.
#[derive(QueryableByName)]
struct Closed {
    #[diesel(sql_type = Text)]
    order_no: String,
    #[diesel(sql_type = BigInt)]
    lines: i64,
    #[diesel(sql_type = BigInt)]
    units: i64,
}

impl Closed {
    fn outcome(&self) -> CloseOutcome {
        CloseOutcome::Closed {
            lines: usize::try_from(self.lines).unwrap_or_default(),
            units: u64::try_from(self.units).unwrap_or_default(),
        }
    }
}

/// Runs [`CLOSE_BATCH_SQL`] over the requests given as columns.
fn run_close(
    conn: &mut PgConnection,
    order_nos: &[&str],
    reasons: &[&str],
    recheck_ats: &[Option<DateTime<Utc>>],
) -> Result<Vec<Closed>, StoreError> {
    Ok(prepared::<CloseBatch, _>(|q| {
        q.bind::<Array<Text>, _>(order_nos)
            .bind::<Array<Text>, _>(reasons)
            .bind::<Array<Nullable<Timestamptz>>, _>(recheck_ats)
            .bind::<Timestamptz, _>(Utc::now())
    })
    .load(conn)?)
}

fn current_status(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<Option<OrderStatus>, StoreError> {
    orders::table
        .filter(orders::order_no.eq(order_no.as_str()))
        .select(orders::status)
        .first::<OrderStatus>(conn)
        .optional()
        .map_err(StoreError::from)
}
