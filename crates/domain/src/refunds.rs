//! Refunds of payments after close: one per such payment, created in the
//! transaction that records it, then moved forward by what WeChat Pay says
//! (the worker's requests and queries, the front door's refund
//! notifications), never backward.
//!
//! The refund's `out_refund_no` is fixed when the row is created, so every
//! request the worker sends for it, before or after a crash, names the same
//! refund at WeChat Pay and cannot refund twice.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::error::StoreError;
use crate::events::record_event;
use crate::models::corrupt;
use crate::order_no::OrderNo;
use crate::schema::{orders, payments, refunds};
use crate::values::Fen;

/// Where a refund stands, as WeChat Pay says (`requested`: not yet accepted
/// by WeChat Pay, as far as we know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefundStatus {
    Requested,
    Processing,
    Succeeded,
    Abnormal,
    Closed,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 5] = [
        Self::Requested,
        Self::Processing,
        Self::Succeeded,
        Self::Abnormal,
        Self::Closed,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Abnormal => "abnormal",
            Self::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| corrupt("refunds.status", format!("unknown status {s:?}")))
    }

    /// Succeeded and closed are the end; abnormal waits for a human, who may
    /// still get it to succeed (or close) at WeChat Pay.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Closed | Self::Abnormal)
    }

    /// The order statuses may move in: forward only.
    fn rank(self) -> u8 {
        match self {
            Self::Requested => 0,
            Self::Processing => 1,
            Self::Abnormal => 2,
            Self::Succeeded | Self::Closed => 3,
        }
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refund with what the worker needs to ask WeChat Pay about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub out_refund_no: String,
    pub order_no: OrderNo,
    pub transaction_id: String,
    pub amount: Fen,
    pub status: RefundStatus,
    pub refund_id: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub needs_human: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

type RefundTuple = (
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
    i32,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

fn from_tuple(t: RefundTuple) -> Result<Refund, StoreError> {
    Ok(Refund {
        out_refund_no: t.0,
        order_no: OrderNo::parse(&t.1).map_err(|e| corrupt("orders.order_no", e))?,
        transaction_id: t.2,
        amount: Fen::new(t.3).map_err(|e| corrupt("refunds.amount_fen", e))?,
        status: RefundStatus::parse(&t.4)?,
        refund_id: t.5,
        attempts: t.6.max(0) as u32,
        next_attempt_at: t.7,
        last_error: t.8,
        needs_human: t.9,
        created_at: t.10,
        finished_at: t.11,
    })
}

macro_rules! refund_columns {
    () => {
        (
            refunds::out_refund_no,
            orders::order_no,
            payments::transaction_id,
            refunds::amount_fen,
            refunds::status,
            refunds::refund_id,
            refunds::attempts,
            refunds::next_attempt_at,
            refunds::last_error,
            refunds::needs_human,
            refunds::created_at,
            refunds::finished_at,
        )
    };
}

/// The `out_refund_no` of the refund of payment row `payment_id` of
/// `order_no`: fixed, so a retried request names the same refund.
#[must_use]
pub fn out_refund_no(order_no: &OrderNo, payment_id: i64) -> String {
    format!("{order_no}-R{payment_id}")
}

/// Creates the refund of a payment after close, in the caller's
/// transaction (the one recording the payment).
pub(crate) fn create_refund(
    conn: &mut PgConnection,
    order_id: i64,
    order_no: &OrderNo,
    payment_id: i64,
    amount: Fen,
    why: &str,
) -> Result<String, StoreError> {
    let no = out_refund_no(order_no, payment_id);
    diesel::insert_into(refunds::table)
        .values((
            refunds::payment_id.eq(payment_id),
            refunds::order_id.eq(order_id),
            refunds::out_refund_no.eq(&no),
            refunds::amount_fen.eq(amount.get()),
        ))
        .execute(conn)?;
    record_event(
        conn,
        order_id,
        "refund",
        &format!("refund {no} of {amount} requested ({why})"),
    )?;
    Ok(no)
}

/// Claims up to `limit` refunds the worker should act on now (requested or
/// processing, not parked, due), oldest due first: each is pushed `lease`
/// into the future and its attempt counted, so that another worker skips
/// it while this one talks to WeChat Pay (no transaction is held across
/// the call). A worker that dies mid-way only delays the refund by `lease`.
pub fn claim_due_refunds(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    lease: Duration,
    limit: i64,
) -> Result<Vec<Refund>, StoreError> {
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    conn.transaction(|conn| {
        let ids: Vec<i64> = refunds::table
            .filter(refunds::status.eq_any(["requested", "processing"]))
            .filter(refunds::needs_human.is_null())
            .filter(refunds::next_attempt_at.le(now))
            .order(refunds::next_attempt_at.asc())
            .limit(limit)
            .select(refunds::id)
            .for_update()
            .skip_locked()
            .load(conn)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        diesel::update(refunds::table.filter(refunds::id.eq_any(&ids)))
            .set((
                refunds::next_attempt_at.eq(now + lease),
                refunds::attempts.eq(refunds::attempts + 1),
                refunds::updated_at.eq(now),
            ))
            .execute(conn)?;
        refunds::table
            .inner_join(orders::table)
            .inner_join(payments::table)
            .filter(refunds::id.eq_any(&ids))
            .order(refunds::id.asc())
            .select(refund_columns!())
            .load::<RefundTuple>(conn)?
            .into_iter()
            .map(from_tuple)
            .collect()
    })
}

/// What [`record_refund_status`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum RefundUpdate {
    /// The refund moved from `from` to the new status.
    Moved { from: RefundStatus },
    /// Nothing new (the same status, or an older one: never backward).
    Unchanged { current: RefundStatus },
    /// No refund has this `out_refund_no`.
    NotFound,
}

/// Moves a refund to `status` as WeChat Pay reported it, forward only
/// (requested, processing, abnormal, then succeeded or closed), with a
/// `refund` event; `refund_id` is kept once known. `abnormal` parks the
/// refund for a human (the buyer's account cannot take the money); a later
/// `succeeded` or `closed` (after the human acted at WeChat Pay) clears
/// that. `next_check` is when the worker should look again while it is not
/// final.
pub fn record_refund_status(
    conn: &mut PgConnection,
    out_refund_no: &str,
    status: RefundStatus,
    refund_id: Option<&str>,
    next_check: DateTime<Utc>,
) -> Result<RefundUpdate, StoreError> {
    conn.transaction(|conn| {
        let Some((id, order_id, current)) = refunds::table
            .filter(refunds::out_refund_no.eq(out_refund_no))
            .select((refunds::id, refunds::order_id, refunds::status))
            .for_update()
            .first::<(i64, i64, String)>(conn)
            .optional()?
        else {
            return Ok(RefundUpdate::NotFound);
        };
        let current = RefundStatus::parse(&current)?;
        let now = Utc::now();
        if let Some(rid) = refund_id {
            diesel::update(refunds::table.find(id))
                .filter(refunds::refund_id.is_null())
                .set(refunds::refund_id.eq(rid))
                .execute(conn)?;
        }
        // WeChat Pay has accepted the refund once it names it or reports a
        // status of it: the day of its row in the trade bill.
        if refund_id.is_some() || status != RefundStatus::Requested {
            diesel::update(refunds::table.find(id))
                .filter(refunds::accepted_at.is_null())
                .set(refunds::accepted_at.eq(now))
                .execute(conn)?;
        }
        if status.rank() <= current.rank() {
            return Ok(RefundUpdate::Unchanged { current });
        }
        let needs_human = (status == RefundStatus::Abnormal).then_some(
            "WeChat Pay reports the refund ABNORMAL: the buyer's account cannot take it back",
        );
        diesel::update(refunds::table.find(id))
            .set((
                refunds::status.eq(status.as_str()),
                refunds::updated_at.eq(now),
                refunds::needs_human.eq(needs_human),
                refunds::next_attempt_at.eq(next_check),
                refunds::finished_at.eq(status.is_final().then_some(now)),
            ))
            .execute(conn)?;
        record_event(
            conn,
            order_id,
            "refund",
            &format!("refund {out_refund_no}: {current} -> {status}"),
        )?;
        Ok(RefundUpdate::Moved { from: current })
    })
}

/// A transient failure: look again at `at`, remembering why.
pub fn retry_refund_later(
    conn: &mut PgConnection,
    out_refund_no: &str,
    at: DateTime<Utc>,
    error: &str,
) -> Result<(), StoreError> {
    diesel::update(refunds::table.filter(refunds::out_refund_no.eq(out_refund_no)))
        .set((
            refunds::next_attempt_at.eq(at),
            refunds::last_error.eq(error),
            refunds::updated_at.eq(Utc::now()),
        ))
        .execute(conn)?;
    Ok(())
}

/// A failure retrying cannot fix: the refund waits for a human, with the
/// reason (shown by `order-producer status`); the worker leaves it alone.
pub fn park_refund(
    conn: &mut PgConnection,
    out_refund_no: &str,
    reason: &str,
) -> Result<(), StoreError> {
    conn.transaction(|conn| {
        let order_id: Option<i64> =
            diesel::update(refunds::table.filter(refunds::out_refund_no.eq(out_refund_no)))
                .filter(refunds::needs_human.is_null())
                .set((
                    refunds::needs_human.eq(reason),
                    refunds::last_error.eq(reason),
                    refunds::updated_at.eq(Utc::now()),
                ))
                .returning(refunds::order_id)
                .get_result(conn)
                .optional()?;
        if let Some(order_id) = order_id {
            record_event(
                conn,
                order_id,
                "refund",
                &format!("refund {out_refund_no} needs a human: {reason}"),
            )?;
        }
        Ok(())
    })
}

/// The refunds of an order, oldest first. Read-only.
pub fn refunds_of(conn: &mut PgConnection, order_no: &OrderNo) -> Result<Vec<Refund>, StoreError> {
    refunds::table
        .inner_join(orders::table)
        .inner_join(payments::table)
        .filter(orders::order_no.eq(order_no.as_str()))
        .order(refunds::id.asc())
        .select(refund_columns!())
        .load::<RefundTuple>(conn)?
        .into_iter()
        .map(from_tuple)
        .collect()
}

/// One refund by its `out_refund_no`. Read-only.
pub fn find_refund(
    conn: &mut PgConnection,
    out_refund_no: &str,
) -> Result<Option<Refund>, StoreError> {
    refunds::table
        .inner_join(orders::table)
        .inner_join(payments::table)
        .filter(refunds::out_refund_no.eq(out_refund_no))
        .select(refund_columns!())
        .first::<RefundTuple>(conn)
        .optional()?
        .map(from_tuple)
        .transpose()
}

/// Refunds by status (statuses with none left out). Read-only.
pub fn refund_counts(conn: &mut PgConnection) -> Result<Vec<(RefundStatus, i64)>, StoreError> {
    refunds::table
        .group_by(refunds::status)
        .select((refunds::status, diesel::dsl::count_star()))
        .order(refunds::status.asc())
        .load::<(String, i64)>(conn)?
        .into_iter()
        .map(|(s, n)| Ok((RefundStatus::parse(&s)?, n)))
        .collect()
}

/// How many refunds are parked for a human. Read-only.
pub fn refunds_needing_human_count(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(refunds::table
        .filter(refunds::needs_human.is_not_null())
        .count()
        .get_result(conn)?)
}

/// Refunds parked for a human, oldest first, at most `limit`. Read-only.
pub fn refunds_needing_human(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<Refund>, StoreError> {
    refunds::table
        .inner_join(orders::table)
        .inner_join(payments::table)
        .filter(refunds::needs_human.is_not_null())
        .order(refunds::updated_at.asc())
        .limit(limit)
        .select(refund_columns!())
        .load::<RefundTuple>(conn)?
        .into_iter()
        .map(from_tuple)
        .collect()
}
