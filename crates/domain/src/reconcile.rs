//! The store's side of reconciliation against WeChat Pay's daily trade bill
//! (`order-timeout-worker reconcile`): the runs, the bill rows kept for
//! neighbouring-day lookups, and the discrepancies left for a human.
//!
//! A day is a Beijing day (UTC+8), as the bill's. Everything here is
//! idempotent: a run of the same date stores the same rows again and finds
//! every discrepancy once (one row per kind and subject, ever). Money moves
//! only through the existing paths (`mark_paid`, `record_refund_status`),
//! called by the service layer; this module records what a run saw.

use std::collections::HashSet;

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, TimeZone, Utc};
use diesel::prelude::*;

use crate::decisions::{record_decision, Decision};
use crate::error::StoreError;
use crate::events::record_event;
use crate::order_no::OrderNo;
use crate::orders::order_id_of;
use crate::schema::{bill_rows, discrepancies, orders, payments, reconciliations, refunds};

/// Beijing time, the bill's clock.
#[must_use]
pub fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset")
}

/// The Beijing day `t` falls on.
#[must_use]
pub fn beijing_day(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&beijing()).date_naive()
}

/// `[start, end)` of Beijing day `date`, in UTC.
#[must_use]
pub fn day_bounds(date: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = beijing()
        .from_local_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists"))
        .single()
        .expect("a fixed offset has one midnight")
        .with_timezone(&Utc);
    (start, start + Duration::days(1))
}

/// How close to midnight a payment or refund must be for the neighbouring
/// day's bill to count too: WeChat Pay dates a row by its own clock, which
/// may fall on the other side of midnight from the time recorded here.
pub const MIDNIGHT_MARGIN: Duration = Duration::minutes(5);

/// The days whose bills may hold something that happened at `t`: its own,
/// and the neighbour when `t` is within [`MIDNIGHT_MARGIN`] of midnight.
#[must_use]
pub fn bill_days_of(t: DateTime<Utc>) -> Vec<NaiveDate> {
    let mut days = vec![beijing_day(t)];
    for near in [t - MIDNIGHT_MARGIN, t + MIDNIGHT_MARGIN] {
        let d = beijing_day(near);
        if !days.contains(&d) {
            days.push(d);
        }
    }
    days
}

/// Key of the advisory locks that let one run per bill date proceed at a
/// time, across every process (the second argument is the date).
const RECONCILE_LOCK_CLASS: i32 = 0x6f74_5f72; // "ot_r"

/// The lock of one bill date, held on its own connection for the whole
/// run; it dies with the connection, so a crashed run never blocks the
/// date for good.
pub struct DateLock {
    conn: PgConnection,
    date: NaiveDate,
}

impl std::fmt::Debug for DateLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DateLock")
            .field("date", &self.date)
            .finish_non_exhaustive()
    }
}

fn lock_key(date: NaiveDate) -> i32 {
    use chrono::Datelike;
    date.num_days_from_ce()
}

impl DateLock {
    /// Takes the lock of `date` on `conn` if nobody holds it; gives the
    /// connection back when another session does.
    pub fn try_acquire(
        mut conn: PgConnection,
        date: NaiveDate,
    ) -> Result<Result<Self, PgConnection>, StoreError> {
        #[derive(diesel::QueryableByName)]
        struct Locked {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            locked: bool,
        }
        let locked = diesel::sql_query(format!(
            "SELECT pg_try_advisory_lock({RECONCILE_LOCK_CLASS}, {}) AS locked",
            lock_key(date)
        ))
        .get_result::<Locked>(&mut conn)?
        .locked;
        Ok(if locked {
            Ok(Self { conn, date })
        } else {
            Err(conn)
        })
    }

    /// Waits for the lock of `date` (another run of it finishing).
    pub fn acquire(mut conn: PgConnection, date: NaiveDate) -> Result<Self, StoreError> {
        diesel::sql_query(format!(
            "SELECT pg_advisory_lock({RECONCILE_LOCK_CLASS}, {})",
            lock_key(date)
        ))
        .execute(&mut conn)?;
        Ok(Self { conn, date })
    }

    /// The connection that holds the lock: the run's own.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// What a finished run was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The bill was compared with the store.
    Reconciled,
    /// WeChat Pay has no bill for the date: no trades that day.
    NoStatement,
}

impl RunOutcome {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reconciled => "reconciled",
            Self::NoStatement => "no_statement",
        }
    }
}

/// Starts a run of `date` (outcome `running`); its id.
pub fn start_run(conn: &mut PgConnection, date: NaiveDate) -> Result<i64, StoreError> {
    Ok(diesel::insert_into(reconciliations::table)
        .values((
            reconciliations::bill_date.eq(date),
            reconciliations::outcome.eq("running"),
        ))
        .returning(reconciliations::id)
        .get_result(conn)?)
}

/// Ends run `id` as failed with `error`; nothing else is recorded.
pub fn fail_run(conn: &mut PgConnection, id: i64, error: &str) -> Result<(), StoreError> {
    diesel::update(reconciliations::table.find(id))
        .set((
            reconciliations::outcome.eq("failed"),
            reconciliations::finished_at.eq(Utc::now()),
            reconciliations::error.eq(error),
        ))
        .execute(conn)?;
    Ok(())
}

/// The figures of a finished run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunTotals {
    pub bill_sha1: Option<String>,
    pub bill_rows: u32,
    pub payments_fen: i64,
    pub refunds_fen: i64,
    pub matched: u32,
    pub acted: u32,
    pub discrepancies: u32,
    pub deferred: u32,
}

/// Ends run `id` with `outcome` and its figures.
pub fn finish_run(
    conn: &mut PgConnection,
    id: i64,
    outcome: RunOutcome,
    totals: &RunTotals,
) -> Result<(), StoreError> {
    diesel::update(reconciliations::table.find(id))
        .set((
            reconciliations::outcome.eq(outcome.as_str()),
            reconciliations::finished_at.eq(Utc::now()),
            reconciliations::bill_sha1.eq(&totals.bill_sha1),
            reconciliations::bill_rows.eq(totals.bill_rows as i32),
            reconciliations::payments_fen.eq(totals.payments_fen),
            reconciliations::refunds_fen.eq(totals.refunds_fen),
            reconciliations::matched.eq(totals.matched as i32),
            reconciliations::acted.eq(totals.acted as i32),
            reconciliations::discrepancies.eq(totals.discrepancies as i32),
            reconciliations::deferred.eq(totals.deferred as i32),
        ))
        .execute(conn)?;
    Ok(())
}

/// Which kind of bill row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// 交易状态 `SUCCESS`: a payment.
    Payment,
    /// 交易状态 `REFUND`: a refund.
    Refund,
    /// Anything else (kept, reported as `unexpected_row`).
    Other,
}

impl RowKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Refund => "refund",
            Self::Other => "other",
        }
    }
}

/// One bill row as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub line: u32,
    pub kind: RowKind,
    pub trade_time: DateTime<Utc>,
    pub trade_state: String,
    pub transaction_id: String,
    pub out_trade_no: String,
    pub out_refund_no: Option<String>,
    pub refund_id: Option<String>,
    pub amount_fen: i64,
}

/// How long bill rows are kept: WeChat Pay's own three months, and a
/// little more (they serve neighbouring-day lookups and a human's look).
pub const KEEP_BILL_ROWS_DAYS: i64 = 100;

/// Replaces the kept rows of `date` with `rows`, in one transaction, and
/// drops those of days more than [`KEEP_BILL_ROWS_DAYS`] before it.
pub fn store_bill_rows(
    conn: &mut PgConnection,
    date: NaiveDate,
    rows: &[StoredRow],
) -> Result<(), StoreError> {
    conn.transaction(|conn| {
        diesel::delete(bill_rows::table.filter(bill_rows::bill_date.eq(date))).execute(conn)?;
        diesel::delete(
            bill_rows::table
                .filter(bill_rows::bill_date.lt(date - Duration::days(KEEP_BILL_ROWS_DAYS))),
        )
        .execute(conn)?;
        // 65,535 bind parameters per statement, 10 per row.
        for chunk in rows.chunks(5_000) {
            let values: Vec<_> = chunk
                .iter()
                .map(|r| {
                    (
                        bill_rows::bill_date.eq(date),
                        bill_rows::line.eq(r.line as i32),
                        bill_rows::kind.eq(r.kind.as_str()),
                        bill_rows::trade_time.eq(r.trade_time),
                        bill_rows::trade_state.eq(&r.trade_state),
                        bill_rows::transaction_id.eq(&r.transaction_id),
                        bill_rows::out_trade_no.eq(&r.out_trade_no),
                        bill_rows::out_refund_no.eq(&r.out_refund_no),
                        bill_rows::refund_id.eq(&r.refund_id),
                        bill_rows::amount_fen.eq(r.amount_fen),
                    )
                })
                .collect();
            diesel::insert_into(bill_rows::table)
                .values(values)
                .execute(conn)?;
        }
        Ok(())
    })
}

/// The dates among `dates` that a run has finished (reconciled, or found
/// no bill): their bills are known.
pub fn known_bill_days(
    conn: &mut PgConnection,
    dates: &[NaiveDate],
) -> Result<HashSet<NaiveDate>, StoreError> {
    Ok(reconciliations::table
        .filter(reconciliations::bill_date.eq_any(dates))
        .filter(reconciliations::outcome.eq_any(["reconciled", "no_statement"]))
        .select(reconciliations::bill_date)
        .distinct()
        .load::<NaiveDate>(conn)?
        .into_iter()
        .collect())
}

/// The days in `[from, to]` that no run has finished (reconciled, or found
/// without a bill), oldest first: days missed or failed.
pub fn days_without_run(
    conn: &mut PgConnection,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<NaiveDate>, StoreError> {
    let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
    let known = known_bill_days(conn, &days)?;
    Ok(days.into_iter().filter(|d| !known.contains(d)).collect())
}

/// The oldest day a run has finished, if any: where reconciliation began.
pub fn first_reconciled_day(conn: &mut PgConnection) -> Result<Option<NaiveDate>, StoreError> {
    Ok(reconciliations::table
        .filter(reconciliations::outcome.eq_any(["reconciled", "no_statement"]))
        .select(diesel::dsl::min(reconciliations::bill_date))
        .first::<Option<NaiveDate>>(conn)?)
}

/// The transaction ids of the payment rows and the refund numbers (and
/// refund ids) of the refund rows kept for `dates`.
pub fn bill_keys(
    conn: &mut PgConnection,
    dates: &[NaiveDate],
) -> Result<(HashSet<String>, HashSet<String>), StoreError> {
    let rows: Vec<(String, String, Option<String>, Option<String>)> = bill_rows::table
        .filter(bill_rows::bill_date.eq_any(dates))
        .filter(bill_rows::kind.eq_any(["payment", "refund"]))
        .select((
            bill_rows::kind,
            bill_rows::transaction_id,
            bill_rows::out_refund_no,
            bill_rows::refund_id,
        ))
        .load(conn)?;
    let mut payments = HashSet::new();
    let mut refunds = HashSet::new();
    for (kind, transaction_id, out_refund_no, refund_id) in rows {
        if kind == "payment" {
            payments.insert(transaction_id);
        } else {
            refunds.extend(out_refund_no);
            refunds.extend(refund_id);
        }
    }
    Ok((payments, refunds))
}

/// A payment recorded here, as reconciliation checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedPayment {
    pub order_no: String,
    pub transaction_id: String,
    pub amount_fen: i64,
    pub success_time: DateTime<Utc>,
    pub paid_after_close: bool,
}

/// The payment recorded here with `transaction_id`, if any.
pub fn payment_by_transaction(
    conn: &mut PgConnection,
    transaction_id: &str,
) -> Result<Option<RecordedPayment>, StoreError> {
    Ok(payments::table
        .inner_join(orders::table)
        .filter(payments::transaction_id.eq(transaction_id))
        .select(PAYMENT_COLUMNS)
        .first::<(String, String, i64, DateTime<Utc>, bool)>(conn)
        .optional()?
        .map(from_payment_tuple))
}

/// The columns a [`RecordedPayment`] is read from, orders joined.
const PAYMENT_COLUMNS: (
    orders::order_no,
    payments::transaction_id,
    payments::amount_fen,
    payments::success_time,
    payments::paid_after_close,
) = (
    orders::order_no,
    payments::transaction_id,
    payments::amount_fen,
    payments::success_time,
    payments::paid_after_close,
);

fn from_payment_tuple(t: (String, String, i64, DateTime<Utc>, bool)) -> RecordedPayment {
    RecordedPayment {
        order_no: t.0,
        transaction_id: t.1,
        amount_fen: t.2,
        success_time: t.3,
        paid_after_close: t.4,
    }
}

/// The payments recorded here that succeeded in `[from, to)`.
pub fn payments_between(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<RecordedPayment>, StoreError> {
    Ok(payments::table
        .inner_join(orders::table)
        .filter(payments::success_time.ge(from))
        .filter(payments::success_time.lt(to))
        .order(payments::success_time)
        .select(PAYMENT_COLUMNS)
        .load::<(String, String, i64, DateTime<Utc>, bool)>(conn)?
        .into_iter()
        .map(from_payment_tuple)
        .collect())
}

/// A refund WeChat Pay accepted, as reconciliation checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRefund {
    pub order_no: String,
    pub out_refund_no: String,
    pub refund_id: Option<String>,
    pub amount_fen: i64,
    pub accepted_at: DateTime<Utc>,
}

/// The refunds WeChat Pay accepted in `[from, to)`.
pub fn refunds_accepted_between(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<AcceptedRefund>, StoreError> {
    Ok(refunds::table
        .inner_join(orders::table)
        .filter(refunds::accepted_at.ge(from))
        .filter(refunds::accepted_at.lt(to))
        .order(refunds::accepted_at)
        .select((
            orders::order_no,
            refunds::out_refund_no,
            refunds::refund_id,
            refunds::amount_fen,
            refunds::accepted_at.assume_not_null(),
        ))
        .load::<(String, String, Option<String>, i64, DateTime<Utc>)>(conn)?
        .into_iter()
        .map(|t| AcceptedRefund {
            order_no: t.0,
            out_refund_no: t.1,
            refund_id: t.2,
            amount_fen: t.3,
            accepted_at: t.4,
        })
        .collect())
}

/// The `out_refund_no` of the refund WeChat Pay knows as `refund_id`.
pub fn refund_by_refund_id(
    conn: &mut PgConnection,
    refund_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(refunds::table
        .filter(refunds::refund_id.eq(refund_id))
        .select(refunds::out_refund_no)
        .first(conn)
        .optional()?)
}

/// What the bill and the store disagree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiscrepancyKind {
    /// A payment recorded here is in no bill of its day (or the neighbour).
    PaymentNotInBill,
    /// A refund WeChat Pay accepted is in no bill of its day.
    RefundNotInBill,
    /// The bill's payment has another amount or order than ours (or than
    /// the order's total), or the order is paid here with another one.
    PaymentDiffers,
    /// The bill's refund has another amount or payment than ours.
    RefundDiffers,
    /// A bill row names an order number that is not an order here.
    UnknownOrder,
    /// A refund of one of our orders that was never asked for here (made by
    /// hand in the merchant platform, for example).
    UnknownRefund,
    /// A row whose trade state is neither SUCCESS nor REFUND, or that names
    /// another merchant.
    UnexpectedRow,
}

impl DiscrepancyKind {
    pub const ALL: [DiscrepancyKind; 7] = [
        Self::PaymentNotInBill,
        Self::RefundNotInBill,
        Self::PaymentDiffers,
        Self::RefundDiffers,
        Self::UnknownOrder,
        Self::UnknownRefund,
        Self::UnexpectedRow,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentNotInBill => "payment_not_in_bill",
            Self::RefundNotInBill => "refund_not_in_bill",
            Self::PaymentDiffers => "payment_differs",
            Self::RefundDiffers => "refund_differs",
            Self::UnknownOrder => "unknown_order",
            Self::UnknownRefund => "unknown_refund",
            Self::UnexpectedRow => "unexpected_row",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| crate::models::corrupt("discrepancies.kind", s))
    }
}

impl std::fmt::Display for DiscrepancyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A discrepancy to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDiscrepancy {
    pub kind: DiscrepancyKind,
    /// What it is about (a transaction id, an `out_refund_no`, a refund id):
    /// with the kind, what makes it the same discrepancy on a second run.
    pub subject: String,
    pub order_no: String,
    /// What the store holds, in words.
    pub ours: String,
    /// What the bill says, in words.
    pub theirs: String,
}

/// Records `d`, found by run `run` in the bill of `date`, unless it was
/// found before (by any run; resolved or not): its id, and `true` when it
/// is new. A new one on an order here also writes a `reconcile` event on
/// that order.
pub fn record_discrepancy(
    conn: &mut PgConnection,
    run: i64,
    date: NaiveDate,
    d: &NewDiscrepancy,
) -> Result<(i64, bool), StoreError> {
    conn.transaction(|conn| {
        let order_id = order_id_of(conn, &d.order_no)?;
        let id: Option<i64> = diesel::insert_into(discrepancies::table)
            .values((
                discrepancies::kind.eq(d.kind.as_str()),
                discrepancies::subject.eq(&d.subject),
                discrepancies::bill_date.eq(date),
                discrepancies::order_id.eq(order_id),
                discrepancies::order_no.eq(&d.order_no),
                discrepancies::ours.eq(&d.ours),
                discrepancies::theirs.eq(&d.theirs),
                discrepancies::found_by.eq(run),
            ))
            .on_conflict_do_nothing()
            .returning(discrepancies::id)
            .get_result(conn)
            .optional()?;
        let Some(id) = id else {
            let id = discrepancies::table
                .filter(discrepancies::kind.eq(d.kind.as_str()))
                .filter(discrepancies::subject.eq(&d.subject))
                .select(discrepancies::id)
                .first(conn)?;
            return Ok((id, false));
        };
        if let Some(order_id) = order_id {
            record_event(
                conn,
                order_id,
                "reconcile",
                &format!(
                    "bill of {date}: discrepancy #{id} ({}): ours: {}; bill: {}",
                    d.kind, d.ours, d.theirs
                ),
            )?;
        }
        Ok((id, true))
    })
}

/// Writes a `reconcile` event on the order `order_no` (what a run did to
/// it); nothing when there is no such order.
pub fn note_reconciled(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    detail: &str,
) -> Result<(), StoreError> {
    if let Some(order_id) = order_id_of(conn, order_no.as_str())? {
        record_event(conn, order_id, "reconcile", detail)?;
    }
    Ok(())
}

/// A discrepancy as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    pub id: i64,
    pub kind: DiscrepancyKind,
    pub subject: String,
    pub bill_date: NaiveDate,
    pub order_no: String,
    /// Whether the order number is an order here.
    pub known_order: bool,
    pub ours: String,
    pub theirs: String,
    pub found_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub resolution: Option<String>,
}

/// A `discrepancies` row as read.
#[derive(Queryable, Selectable)]
#[diesel(table_name = discrepancies, check_for_backend(diesel::pg::Pg))]
struct DiscrepancyRow {
    id: i64,
    kind: String,
    subject: String,
    bill_date: NaiveDate,
    order_no: String,
    order_id: Option<i64>,
    ours: String,
    theirs: String,
    found_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
    resolved_by: Option<String>,
    resolution: Option<String>,
}

impl DiscrepancyRow {
    fn into_discrepancy(self) -> Result<Discrepancy, StoreError> {
        Ok(Discrepancy {
            id: self.id,
            kind: DiscrepancyKind::parse(&self.kind)?,
            subject: self.subject,
            bill_date: self.bill_date,
            order_no: self.order_no,
            known_order: self.order_id.is_some(),
            ours: self.ours,
            theirs: self.theirs,
            found_at: self.found_at,
            resolved_at: self.resolved_at,
            resolved_by: self.resolved_by,
            resolution: self.resolution,
        })
    }
}

/// The open discrepancies, oldest first, at most `limit`.
pub fn open_discrepancies(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<Discrepancy>, StoreError> {
    discrepancies::table
        .filter(discrepancies::resolved_at.is_null())
        .order((discrepancies::found_at, discrepancies::id))
        .limit(limit)
        .select(DiscrepancyRow::as_select())
        .load(conn)?
        .into_iter()
        .map(DiscrepancyRow::into_discrepancy)
        .collect()
}

/// How many discrepancies are open, by kind (every kind, zeros included).
pub fn open_discrepancy_counts(
    conn: &mut PgConnection,
) -> Result<Vec<(DiscrepancyKind, i64)>, StoreError> {
    let rows: Vec<(String, i64)> = discrepancies::table
        .filter(discrepancies::resolved_at.is_null())
        .group_by(discrepancies::kind)
        .select((discrepancies::kind, diesel::dsl::count_star()))
        .load(conn)?;
    Ok(DiscrepancyKind::ALL
        .into_iter()
        .map(|k| {
            let n = rows
                .iter()
                .find(|(kind, _)| kind == k.as_str())
                .map_or(0, |(_, n)| *n);
            (k, n)
        })
        .collect())
}

/// Ends discrepancy `id` with the operator's decision (who and why), and
/// writes a `decision` event on its order when it has one. Refused when it
/// is unknown or already resolved; nothing changes then.
pub fn resolve_discrepancy(
    conn: &mut PgConnection,
    id: i64,
    decision: &Decision,
) -> Result<Discrepancy, StoreError> {
    conn.transaction(|conn| {
        let row: Option<(Option<DateTime<Utc>>, Option<i64>)> = discrepancies::table
            .find(id)
            .select((discrepancies::resolved_at, discrepancies::order_id))
            .for_update()
            .first(conn)
            .optional()?;
        let Some((resolved_at, order_id)) = row else {
            return Err(StoreError::Refused(format!("no discrepancy #{id}")));
        };
        if resolved_at.is_some() {
            return Err(StoreError::Refused(format!(
                "discrepancy #{id} is already resolved"
            )));
        }
        let resolution = decision.reason();
        let d = diesel::update(discrepancies::table.find(id))
            .set((
                discrepancies::resolved_at.eq(Utc::now()),
                discrepancies::resolved_by.eq(decision.by()),
                discrepancies::resolution.eq(resolution),
            ))
            .returning(DiscrepancyRow::as_returning())
            .get_result(conn)?
            .into_discrepancy()?;
        if let Some(order_id) = order_id {
            record_decision(
                conn,
                order_id,
                "RESOLVE",
                &format!(
                    "discrepancy #{id} ({}) in the bill of {} marked resolved",
                    d.kind, d.bill_date
                ),
                decision,
            )?;
        }
        Ok(d)
    })
}

/// A run, as `status` and the metrics read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub id: i64,
    pub bill_date: NaiveDate,
    pub outcome: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub bill_rows: i32,
    pub matched: i32,
    pub acted: i32,
    pub discrepancies: i32,
    pub deferred: i32,
    pub error: Option<String>,
}

/// A `reconciliations` row as read (the derives stay private, as in
/// `models`).
#[derive(Queryable, Selectable)]
#[diesel(table_name = reconciliations, check_for_backend(diesel::pg::Pg))]
struct RunRow {
    id: i64,
    bill_date: NaiveDate,
    outcome: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    bill_rows: i32,
    matched: i32,
    acted: i32,
    discrepancies: i32,
    deferred: i32,
    error: Option<String>,
}

fn load_run(
    conn: &mut PgConnection,
    query: reconciliations::BoxedQuery<'_, diesel::pg::Pg>,
) -> Result<Option<Run>, StoreError> {
    Ok(query
        .select(RunRow::as_select())
        .first(conn)
        .optional()?
        .map(|r: RunRow| Run {
            id: r.id,
            bill_date: r.bill_date,
            outcome: r.outcome,
            started_at: r.started_at,
            finished_at: r.finished_at,
            bill_rows: r.bill_rows,
            matched: r.matched,
            acted: r.acted,
            discrepancies: r.discrepancies,
            deferred: r.deferred,
            error: r.error,
        }))
}

/// The finished run of the newest bill date reconciled (or found empty).
pub fn last_reconciled(conn: &mut PgConnection) -> Result<Option<Run>, StoreError> {
    load_run(
        conn,
        reconciliations::table
            .filter(reconciliations::outcome.eq_any(["reconciled", "no_statement"]))
            .order((
                reconciliations::bill_date.desc(),
                reconciliations::id.desc(),
            ))
            .into_boxed(),
    )
}

/// The latest run started, whatever its outcome.
pub fn last_run(conn: &mut PgConnection) -> Result<Option<Run>, StoreError> {
    load_run(
        conn,
        reconciliations::table
            .order(reconciliations::id.desc())
            .into_boxed(),
    )
}

/// Rows of every run so far, by what became of them: matched, acted on,
/// found a discrepancy in (monotonic: runs are never deleted).
pub fn row_totals(conn: &mut PgConnection) -> Result<(i64, i64, i64), StoreError> {
    use diesel::dsl::sum;
    let (m, a, d): (Option<i64>, Option<i64>, Option<i64>) = reconciliations::table
        .select((
            sum(reconciliations::matched),
            sum(reconciliations::acted),
            sum(reconciliations::discrepancies),
        ))
        .first(conn)?;
    Ok((m.unwrap_or(0), a.unwrap_or(0), d.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn beijing_days_start_at_sixteen_utc() {
        let (start, end) = day_bounds(day("2026-12-05"));
        assert_eq!(start, utc("2026-12-04T16:00:00Z"));
        assert_eq!(end, utc("2026-12-05T16:00:00Z"));
        assert_eq!(beijing_day(utc("2026-12-05T15:59:59Z")), day("2026-12-05"));
        assert_eq!(beijing_day(utc("2026-12-05T16:00:01Z")), day("2026-12-06"));
    }

    #[test]
    fn near_midnight_the_neighbouring_bill_counts_too() {
        assert_eq!(
            bill_days_of(utc("2026-12-05T15:59:59+00:00")),
            [day("2026-12-05"), day("2026-12-06")]
        );
        assert_eq!(
            bill_days_of(utc("2026-12-06T00:00:01+08:00")),
            [day("2026-12-06"), day("2026-12-05")]
        );
        assert_eq!(
            bill_days_of(utc("2026-12-06T12:00:00+08:00")),
            [day("2026-12-06")]
        );
    }
}
