//! What the sweep pages through (invariant 14): pending orders past their
//! deadline and closed orders whose recheck is due (invariant 13), in
//! keyset order, leaving out orders a human holds (an anomaly) and orders
//! asked about recently. Read-only.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::error::StoreError;
use crate::models::corrupt;
use crate::order_no::OrderNo;
use crate::schema::orders;
use crate::values::OrderStatus;

/// An order the sweep may look at, with its place in the keyset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverdueOrder {
    pub id: i64,
    pub order_no: OrderNo,
    pub deadline: DateTime<Utc>,
    /// Earlier sweep passes that could not settle it.
    pub check_failures: u32,
}

impl OverdueOrder {
    /// Where the next page of [`pending_past_deadline`] starts.
    #[must_use]
    pub fn cursor(&self) -> SweepCursor {
        SweepCursor {
            deadline: self.deadline,
            id: self.id,
        }
    }
}

type OverdueRow = (i64, String, DateTime<Utc>, i32);

impl TryFrom<OverdueRow> for OverdueOrder {
    type Error = StoreError;
    fn try_from((id, no, deadline, failures): OverdueRow) -> Result<Self, StoreError> {
        Ok(OverdueOrder {
            id,
            order_no: OrderNo::parse(&no).map_err(|e| corrupt("orders.order_no", e))?,
            deadline,
            check_failures: u32::try_from(failures)
                .map_err(|e| corrupt("orders.check_failures", e))?,
        })
    }
}

/// A position in the sweep's keyset order `(deadline, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepCursor {
    pub deadline: DateTime<Utc>,
    pub id: i64,
}

/// One page of pending orders whose deadline is before `before`, in
/// `(deadline, id)` order after `after`, at most `limit`: what the sweep
/// settles. Leaves out orders with an anomaly (a human's) and orders whose
/// `next_check_at` is after `now` (asked recently, see [`crate::defer_check`]).
/// Paging by keyset reaches every overdue order in one pass however many of
/// the oldest stay unsettled. Uses `orders_pending_deadline_idx`. Read-only.
pub fn pending_past_deadline(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    after: Option<SweepCursor>,
    limit: i64,
) -> Result<Vec<OverdueOrder>, StoreError> {
    let mut query = orders::table
        .filter(orders::status.eq(OrderStatus::PendingPayment))
        .filter(orders::anomaly.is_null())
        .filter(orders::deadline.lt(before))
        .filter(
            orders::next_check_at
                .is_null()
                .or(orders::next_check_at.le(now)),
        )
        .into_boxed();
    if let Some(c) = after {
        query = query.filter(
            orders::deadline
                .gt(c.deadline)
                .or(orders::deadline.eq(c.deadline).and(orders::id.gt(c.id))),
        );
    }
    query
        .order((orders::deadline.asc(), orders::id.asc()))
        .limit(limit)
        .select((
            orders::id,
            orders::order_no,
            orders::deadline,
            orders::check_failures,
        ))
        .load::<OverdueRow>(conn)?
        .into_iter()
        .map(OverdueOrder::try_from)
        .collect()
}

/// Closed orders whose recheck was due before `before`, by id after
/// `after_id`, at most `limit`, leaving out those deferred past `now` and
/// those with an anomaly (a human's): the
/// sweep's safety net for recheck messages that were lost. Read-only.
pub fn rechecks_due(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    after_id: i64,
    limit: i64,
) -> Result<Vec<OverdueOrder>, StoreError> {
    orders::table
        .filter(orders::recheck_at.lt(before))
        // A recheck that found an answer needing a human is the human's now:
        // asking again every pass would change nothing.
        .filter(orders::anomaly.is_null())
        .filter(orders::id.gt(after_id))
        .filter(
            orders::next_check_at
                .is_null()
                .or(orders::next_check_at.le(now)),
        )
        .order(orders::id.asc())
        .limit(limit)
        .select((
            orders::id,
            orders::order_no,
            orders::deadline,
            orders::check_failures,
        ))
        .load::<OverdueRow>(conn)?
        .into_iter()
        .map(OverdueOrder::try_from)
        .collect()
}
