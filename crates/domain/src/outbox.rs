//! The outbox: delay messages written with their order, published later by
//! the relay. A row is marked published only after the broker confirmed it;
//! rows are claimed with `FOR UPDATE SKIP LOCKED` so several relays can run.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::error::StoreError;
use crate::models::corrupt;
use crate::order_no::OrderNo;
use crate::schema::{orders, outbox};

/// One unpublished delay message: everything the message body needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub outbox_id: i64,
    pub order_no: OrderNo,
    pub created_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// Earlier failed publish attempts of this row.
    pub attempts: i32,
}

/// What the publisher reports for a claimed batch. Rows in neither list are
/// left as they were (for a later try).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Outbox ids the broker confirmed: marked published.
    pub confirmed: Vec<i64>,
    /// Outbox ids that failed, with why: attempts counted, error kept.
    pub failed: Vec<(i64, String)>,
}

/// What one relay batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use]
pub struct RelayBatch {
    pub claimed: usize,
    pub published: usize,
    pub failed: usize,
}

/// Claims up to `limit` unpublished outbox rows (oldest first, skipping rows
/// another relay holds), hands them to `publish`, and marks published exactly
/// the ids `publish` reports confirmed, all in one transaction: the claim
/// lasts while `publish` runs.
///
/// If `publish` returns an error, or the process dies before commit, nothing
/// is marked and the rows come back in a later batch: a message may then be
/// published twice, which the design allows. Ids `publish` reports that were
/// not in the batch are ignored. Repeat: the next batch of what is left.
pub fn relay_batch<E>(
    conn: &mut PgConnection,
    limit: i64,
    publish: impl FnOnce(&[OutboxMessage]) -> Result<PublishReport, E>,
) -> Result<Result<RelayBatch, E>, StoreError> {
    conn.transaction(|conn| {
        // Lock outbox rows only (not the orders: the worker may be settling
        // them meanwhile), skipping rows another relay holds.
        let claimed: Vec<(i64, i64, i32)> = outbox::table
            .filter(outbox::published_at.is_null())
            .order(outbox::id.asc())
            .limit(limit)
            .select((outbox::id, outbox::order_id, outbox::attempts))
            .for_update()
            .skip_locked()
            .load(conn)?;
        let order_ids: Vec<i64> = claimed.iter().map(|(_, order_id, _)| *order_id).collect();
        let order_data: HashMap<i64, (String, DateTime<Utc>, DateTime<Utc>)> = orders::table
            .filter(orders::id.eq_any(&order_ids))
            .select((
                orders::id,
                orders::order_no,
                orders::created_at,
                orders::deadline,
            ))
            .load::<(i64, String, DateTime<Utc>, DateTime<Utc>)>(conn)?
            .into_iter()
            .map(|(id, no, created_at, deadline)| (id, (no, created_at, deadline)))
            .collect();
        let batch: Vec<OutboxMessage> = claimed
            .into_iter()
            .map(|(outbox_id, order_id, attempts)| {
                // The foreign key guarantees the order exists.
                let (no, created_at, deadline) = order_data
                    .get(&order_id)
                    .ok_or_else(|| corrupt("outbox.order_id", order_id))?;
                Ok(OutboxMessage {
                    outbox_id,
                    order_no: OrderNo::parse(no).map_err(|e| corrupt("orders.order_no", e))?,
                    created_at: *created_at,
                    deadline: *deadline,
                    attempts,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        if batch.is_empty() {
            return Ok(Ok(RelayBatch::default()));
        }
        let report = match publish(&batch) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let ids: HashSet<i64> = batch.iter().map(|m| m.outbox_id).collect();
        let confirmed: Vec<i64> = report
            .confirmed
            .iter()
            .copied()
            .filter(|id| ids.contains(id))
            .collect();
        let now = Utc::now();
        let published = diesel::update(outbox::table.filter(outbox::id.eq_any(&confirmed)))
            .set(outbox::published_at.eq(now))
            .execute(conn)?;
        let mut failed = 0;
        for (id, why) in report.failed.iter().filter(|(id, _)| ids.contains(id)) {
            failed += diesel::update(outbox::table.find(id))
                .set((
                    outbox::attempts.eq(outbox::attempts + 1),
                    outbox::last_error.eq(why),
                ))
                .execute(conn)?;
        }
        Ok(Ok(RelayBatch {
            claimed: batch.len(),
            published,
            failed,
        }))
    })
}

/// The unpublished outbox: how many rows, and when the oldest was written
/// (by id, through the partial index on unpublished rows). Read-only.
pub fn outbox_backlog(conn: &mut PgConnection) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
    let count = unpublished_count(conn)?;
    let oldest = outbox::table
        .filter(outbox::published_at.is_null())
        .order(outbox::id.asc())
        .select(outbox::created_at)
        .first(conn)
        .optional()?;
    Ok((count, oldest))
}

/// Number of outbox rows not yet published. Read-only.
pub fn unpublished_count(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(outbox::table
        .filter(outbox::published_at.is_null())
        .count()
        .get_result(conn)?)
}
