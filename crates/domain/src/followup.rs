//! What follows an order's first answer from WeChat Pay when that answer
//! does not settle it for good: anomalies left for a human, the one recheck
//! after a close on `ORDER_NOT_EXIST`, and the sweep's back-off per order.
//!
//! None of these moves an order between statuses or touches stock: they
//! only record what was seen and when to look again.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamptz};

use crate::error::StoreError;
use crate::events::record_event;
use crate::models::corrupt;
use crate::order_no::OrderNo;
use crate::prepared::{prepared, Sql};
use crate::schema::{order_events, orders};
use crate::values::{Anomaly, OrderStatus};

/// What [`record_anomaly`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum AnomalyOutcome {
    /// The anomaly is now on the order, with an `anomaly` event.
    Recorded,
    /// The order already carried this anomaly; nothing changed.
    AlreadyRecorded,
    /// No order has this number.
    NotFound,
}

/// Marks the order as needing a human because of `anomaly`, with an
/// `anomaly` event whose detail is `detail` (say what was expected and what
/// WeChat Pay said). Status and stock are left alone: a pending order keeps
/// its stock held, and the sweep no longer takes it.
///
/// Repeat with the same anomaly: `AlreadyRecorded`, nothing changes (a
/// redelivered message adds no second event). Another anomaly replaces it
/// and is recorded as a new event.
pub fn record_anomaly(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    anomaly: Anomaly,
    detail: &str,
) -> Result<AnomalyOutcome, StoreError> {
    conn.transaction(|conn| {
        let now = Utc::now();
        let updated: Option<i64> = diesel::update(
            orders::table
                .filter(orders::order_no.eq(order_no.as_str()))
                .filter(
                    orders::anomaly
                        .is_null()
                        .or(orders::anomaly.ne(anomaly.as_str())),
                ),
        )
        .set((
            orders::anomaly.eq(anomaly.as_str()),
            orders::anomaly_at.eq(now),
            orders::updated_at.eq(now),
        ))
        .returning(orders::id)
        .get_result(conn)
        .optional()?;
        let Some(order_id) = updated else {
            let exists: bool = diesel::select(diesel::dsl::exists(
                orders::table.filter(orders::order_no.eq(order_no.as_str())),
            ))
            .get_result(conn)?;
            return Ok(if exists {
                AnomalyOutcome::AlreadyRecorded
            } else {
                AnomalyOutcome::NotFound
            });
        };
        record_event(conn, order_id, "anomaly", &format!("{anomaly}: {detail}"))?;
        Ok(AnomalyOutcome::Recorded)
    })
}

/// An order that waits for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedsHuman {
    pub order_no: OrderNo,
    pub status: OrderStatus,
    pub anomaly: Anomaly,
    pub since: DateTime<Utc>,
    /// The detail of the latest `anomaly` event.
    pub detail: String,
}

/// Pending orders (without an anomaly) whose deadline is before `now`: how
/// many, and the earliest deadline among them. Normally a handful, settled
/// within a second or two; many, or an old one, means settling stalls.
/// Read-only (the sweep's index on pending deadlines).
pub fn overdue_pending(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
    let overdue = orders::table
        .filter(orders::status.eq(OrderStatus::PendingPayment.as_str()))
        .filter(orders::anomaly.is_null())
        .filter(orders::deadline.lt(now));
    let count = overdue.count().get_result(conn)?;
    let oldest = overdue
        .select(diesel::dsl::min(orders::deadline))
        .get_result(conn)?;
    Ok((count, oldest))
}

/// How many orders carry an anomaly. Read-only.
pub fn needs_human_count(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(orders::table
        .filter(orders::anomaly.is_not_null())
        .count()
        .get_result(conn)?)
}

/// The orders that carry an anomaly, oldest first, at most `limit`.
/// Read-only.
pub fn needs_human(conn: &mut PgConnection, limit: i64) -> Result<Vec<NeedsHuman>, StoreError> {
    type Row = (
        i64,
        String,
        OrderStatus,
        Option<String>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = orders::table
        .filter(orders::anomaly.is_not_null())
        .order((orders::anomaly_at.asc(), orders::id.asc()))
        .limit(limit)
        .select((
            orders::id,
            orders::order_no,
            orders::status,
            orders::anomaly,
            orders::anomaly_at,
        ))
        .load(conn)?;
    rows.into_iter()
        .map(|(id, no, status, anomaly, since)| {
            let detail: Option<String> = order_events::table
                .filter(order_events::order_id.eq(id))
                .filter(order_events::kind.eq("anomaly"))
                .order(order_events::id.desc())
                .select(order_events::detail)
                .first(conn)
                .optional()?;
            Ok(NeedsHuman {
                order_no: OrderNo::parse(&no).map_err(|e| corrupt("orders.order_no", e))?,
                status,
                anomaly: Anomaly::parse(anomaly.as_deref().unwrap_or_default())
                    .map_err(|e| corrupt("orders.anomaly", e))?,
                since: since.ok_or_else(|| corrupt("orders.anomaly_at", "null"))?,
                detail: detail.unwrap_or_default(),
            })
        })
        .collect()
}

/// Ends a closed order's pending recheck, with a `recheck` event saying
/// what was found. Returns false (and changes nothing) when no recheck was
/// pending: a duplicate recheck message is then a no-op.
pub fn finish_recheck(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    found: &str,
) -> Result<bool, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Done {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let done: Done = prepared::<FinishRecheck, _>(|q| {
        q.bind::<Timestamptz, _>(Utc::now())
            .bind::<Text, _>(order_no.as_str())
            .bind::<Text, _>(found)
    })
    .get_result(conn)?;
    Ok(done.n == 1)
}

/// [`finish_recheck`] in one statement (atomic by itself, one round trip).
const FINISH_RECHECK_SQL: &str = "
WITH o AS (
    UPDATE orders SET recheck_at = NULL, next_check_at = NULL, check_failures = 0,
                      updated_at = $1
     WHERE order_no = $2 AND recheck_at IS NOT NULL
 RETURNING id
), e AS (
    INSERT INTO order_events (order_id, kind, detail) SELECT id, 'recheck', $3 FROM o
)
SELECT count(*) AS n FROM o
";

struct FinishRecheck;

impl Sql for FinishRecheck {
    const TEXT: &'static str = FINISH_RECHECK_SQL;
}

/// Notes that the sweep could not settle the order now: counts the failure
/// and keeps the sweep away from it until `next_check_at`. Returns false
/// when there is no such order.
pub fn defer_check(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    next_check_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let n = diesel::update(orders::table.filter(orders::order_no.eq(order_no.as_str())))
        .set((
            orders::next_check_at.eq(next_check_at),
            orders::check_failures.eq(orders::check_failures + 1),
        ))
        .execute(conn)?;
    Ok(n == 1)
}
