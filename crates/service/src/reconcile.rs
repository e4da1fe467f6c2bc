//! Reconciling one Beijing day against WeChat Pay's trade bill, the only
//! ground truth for money in production (`order-timeout-worker reconcile`).
//!
//! One run per date at a time across all processes (a PostgreSQL advisory
//! lock per date; a second run waits, then finds everything done). The bill
//! is fetched with the signed client and trusted through its SHA1; a bill
//! that is refused (hash, truncated, summary) records nothing but the failed
//! run and its reason. Then every row is compared with the store:
//!
//! * a payment in the bill that is recorded here: matched, when the order
//!   and amount agree;
//! * a payment in the bill that is not recorded here, for an order here with
//!   that total: the same path as a late payment notification
//!   ([`crate::payments::record_payment`]): a pending order becomes paid, a
//!   closed one gets a payment after close and its refund;
//! * a refund in the bill that is ours: moved forward (never backward)
//!   through [`domain::record_refund_status`];
//! * everything else, and every payment or refund recorded here for the day
//!   that no bill of the day (or the neighbouring day, near midnight) holds:
//!   a discrepancy for a human, never changed automatically.
//!
//! Re-running a date repeats the comparison: what was acted on is now
//! matched, each discrepancy was recorded once and is not again.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use domain::reconcile::{
    self as store, DateLock, DiscrepancyKind, NewDiscrepancy, RowKind, RunOutcome, RunTotals,
    StoredRow,
};
use domain::{DatabaseUrl, Fen, OrderNo, PgConnection, RefundStatus, RefundUpdate, StoreError};
use payment_client::{
    Amount, Bill, BillRefund, BillRow, Client, TradeBill, TradeState, Transaction,
};
use serde::Serialize;

use crate::payments::{record_payment, Recorded};
use crate::{sleep_unless_stopped, Backoff};

/// Why a run did not reconcile its date.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// WeChat Pay's bill could not be had (not ready in time, refused,
    /// unreadable): nothing was recorded but the failed run.
    #[error("the trade bill of {date} could not be used: {reason}")]
    Bill { date: NaiveDate, reason: String },
    #[error("reconciling {date}: {source}")]
    Store {
        date: NaiveDate,
        #[source]
        source: StoreError,
    },
    /// Stopped (SIGTERM) while waiting for the bill.
    #[error("stopped while waiting for the trade bill of {0}")]
    Stopped(NaiveDate),
}

/// How long to keep asking while WeChat Pay is still creating the bill
/// (`STATEMENT_CREATING`) or cannot be reached; and the first delay.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub wait: Duration,
    pub first_delay: Duration,
}

/// One action taken on the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Acted {
    pub order_no: String,
    pub what: String,
}

/// A discrepancy as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub id: i64,
    pub kind: &'static str,
    pub subject: String,
    pub order_no: String,
    pub ours: String,
    pub bill: String,
    /// Found by an earlier run (not recorded again).
    pub known: bool,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub date: NaiveDate,
    /// `reconciled` or `no_statement`.
    pub outcome: &'static str,
    pub run: i64,
    pub bill_sha1: Option<String>,
    pub bill_rows: u32,
    pub payment_rows: u32,
    pub refund_rows: u32,
    pub payments_fen: i64,
    pub refunds_fen: i64,
    pub matched: u32,
    pub acted: Vec<Acted>,
    pub discrepancies: Vec<Found>,
    /// Payments and refunds recorded here near midnight whose neighbouring
    /// day has not been reconciled yet: that day's run decides them.
    pub deferred: u32,
    /// Open discrepancies of every day, after this run.
    pub open_discrepancies: i64,
}

impl Report {
    /// Discrepancies this run found for the first time.
    #[must_use]
    pub fn new_discrepancies(&self) -> usize {
        self.discrepancies.iter().filter(|d| !d.known).count()
    }
}

/// Reconciles `date`: takes the date's lock (waiting for another run of it),
/// fetches the bill, compares, records. See the module docs.
pub fn reconcile_day(
    database: &DatabaseUrl,
    client: &Client,
    date: NaiveDate,
    patience: Patience,
    stop: &AtomicBool,
) -> Result<Report, ReconcileError> {
    let store_err = |source| ReconcileError::Store { date, source };
    let conn = domain::connect(database).map_err(store_err)?;
    let mut lock = match DateLock::try_acquire(conn, date).map_err(store_err)? {
        Ok(lock) => lock,
        Err(conn) => {
            log::info!("another process is reconciling {date}; waiting for it to finish");
            DateLock::acquire(conn, date).map_err(store_err)?
        }
    };
    let conn = lock.conn();
    let run = store::start_run(conn, date).map_err(store_err)?;
    let fetched = fetch_bill(client, date, patience, stop);
    let bill = match fetched {
        Ok(bill) => bill,
        Err(e) => {
            let reason = match &e {
                ReconcileError::Bill { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            store::fail_run(conn, run, &reason).map_err(store_err)?;
            return Err(e);
        }
    };
    match compare(conn, run, date, client.mchid(), bill.as_ref()) {
        Ok(report) => Ok(report),
        Err(e) => {
            // Each action taken so far is complete and idempotent: running
            // the date again finishes the job.
            let _ = store::fail_run(conn, run, &e.to_string());
            Err(store_err(e))
        }
    }
}

/// The bill of `date`: `None` for a day without trades. Waits, with
/// back-off and for at most `patience.wait`, while WeChat Pay is still
/// creating it or cannot be reached.
pub fn fetch_bill(
    client: &Client,
    date: NaiveDate,
    patience: Patience,
    stop: &AtomicBool,
) -> Result<Option<Bill>, ReconcileError> {
    let started = Instant::now();
    let mut backoff = Backoff::new(
        patience.first_delay,
        patience.wait.max(patience.first_delay) / 4,
    );
    loop {
        let why_wait = match client.trade_bill(date) {
            Ok(TradeBill::Ready(bill)) => return Ok(Some(bill)),
            Ok(TradeBill::NoStatement) => return Ok(None),
            Ok(TradeBill::NotReady { message }) => {
                format!("WeChat Pay is still creating it (STATEMENT_CREATING: {message})")
            }
            Err(e) if e.is_transient() => format!("WeChat Pay could not be asked: {e}"),
            Err(e) => {
                return Err(ReconcileError::Bill {
                    date,
                    reason: e.to_string(),
                })
            }
        };
        let delay = backoff.next_delay();
        if started.elapsed() + delay > patience.wait {
            return Err(ReconcileError::Bill {
                date,
                reason: format!(
                    "not available after waiting {}: {why_wait}; run it again later",
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
                ),
            });
        }
        log::warn!("trade bill of {date}: {why_wait}; asking again in {delay:.1?}");
        sleep_unless_stopped(delay, stop);
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ReconcileError::Stopped(date));
        }
    }
}

/// The comparison itself, on the run's connection (see the module docs).
/// `bill` is `None` for a day WeChat Pay has no bill for.
/// `mchid` is ours: a row for another merchant is never acted on.
pub fn compare(
    conn: &mut PgConnection,
    run: i64,
    date: NaiveDate,
    mchid: &str,
    bill: Option<&Bill>,
) -> Result<Report, StoreError> {
    let rows: &[BillRow] = bill.map_or(&[], |b| &b.rows);
    store::store_bill_rows(conn, date, &rows.iter().map(stored_row).collect::<Vec<_>>())?;
    let mut c = Comparison {
        conn,
        run,
        date,
        report: Report {
            date,
            outcome: if bill.is_some() {
                RunOutcome::Reconciled.as_str()
            } else {
                RunOutcome::NoStatement.as_str()
            },
            run,
            bill_sha1: bill.map(|b| b.sha1.clone()),
            bill_rows: rows.len() as u32,
            payment_rows: 0,
            refund_rows: 0,
            payments_fen: bill.map_or(0, |b| b.summary.settlement_fen),
            refunds_fen: bill.and_then(|b| b.summary.refund_fen).unwrap_or(0),
            matched: 0,
            acted: Vec::new(),
            discrepancies: Vec::new(),
            deferred: 0,
            open_discrepancies: 0,
        },
    };
    for row in rows {
        if let Some(other) = row.mchid.as_deref().filter(|m| *m != mchid) {
            c.discrepancy(NewDiscrepancy {
                kind: DiscrepancyKind::UnexpectedRow,
                subject: format!("{} {} {other}", row.transaction_id, row.trade_state),
                order_no: row.out_trade_no.clone(),
                ours: format!("nothing: the bill is merchant {mchid}'s"),
                theirs: format!(
                    "line {}: transaction {} ({}) for merchant {other}",
                    row.line, row.transaction_id, row.trade_state
                ),
            })?;
            continue;
        }
        match row_kind(row) {
            RowKind::Payment => {
                c.report.payment_rows += 1;
                c.payment_row(row)?;
            }
            RowKind::Refund => {
                c.report.refund_rows += 1;
                c.refund_row(row)?;
            }
            RowKind::Other => c.discrepancy(NewDiscrepancy {
                kind: DiscrepancyKind::UnexpectedRow,
                subject: format!("{} {}", row.transaction_id, row.trade_state),
                order_no: row.out_trade_no.clone(),
                ours: "nothing: only SUCCESS and REFUND rows are reconciled".into(),
                theirs: format!(
                    "line {}: trade state {} for transaction {}",
                    row.line, row.trade_state, row.transaction_id
                ),
            })?,
        }
    }
    c.not_in_bill()?;
    let outcome = if bill.is_some() {
        RunOutcome::Reconciled
    } else {
        RunOutcome::NoStatement
    };
    let totals = RunTotals {
        bill_sha1: c.report.bill_sha1.clone(),
        bill_rows: c.report.bill_rows,
        payments_fen: c.report.payments_fen,
        refunds_fen: c.report.refunds_fen,
        matched: c.report.matched,
        acted: c.report.acted.len() as u32,
        discrepancies: c.report.new_discrepancies() as u32,
        deferred: c.report.deferred,
    };
    store::finish_run(c.conn, run, outcome, &totals)?;
    c.report.open_discrepancies = store::open_discrepancy_counts(c.conn)?
        .iter()
        .map(|(_, n)| n)
        .sum();
    Ok(c.report)
}

fn row_kind(row: &BillRow) -> RowKind {
    match row.trade_state.as_str() {
        "SUCCESS" => RowKind::Payment,
        "REFUND" if row.refund.is_some() => RowKind::Refund,
        _ => RowKind::Other,
    }
}

/// A payment row's amount: 订单金额 where the layout has it (what the query
/// reports as `amount.total`), else 应结订单金额.
fn payment_fen(row: &BillRow) -> i64 {
    row.order_fen.unwrap_or(row.settlement_fen)
}

/// A refund row's amount: what was asked for (申请退款金额), else 退款金额.
fn refund_fen(row: &BillRow) -> i64 {
    row.refund
        .as_ref()
        .map_or(0, |r| r.requested_fen.unwrap_or(r.refund_fen))
}

fn stored_row(row: &BillRow) -> StoredRow {
    let kind = row_kind(row);
    StoredRow {
        line: row.line as u32,
        kind,
        trade_time: row.trade_time.with_timezone(&Utc),
        trade_state: row.trade_state.clone(),
        transaction_id: row.transaction_id.clone(),
        out_trade_no: row.out_trade_no.clone(),
        out_refund_no: row.refund.as_ref().and_then(|r| r.out_refund_no.clone()),
        refund_id: row.refund.as_ref().and_then(|r| r.refund_id.clone()),
        amount_fen: if kind == RowKind::Refund {
            refund_fen(row)
        } else {
            payment_fen(row)
        },
    }
}

/// A bill's 退款状态 in the store's terms (`None`: not one we follow).
fn refund_status(s: Option<&str>) -> Option<RefundStatus> {
    match s? {
        "SUCCESS" => Some(RefundStatus::Succeeded),
        "PROCESSING" => Some(RefundStatus::Processing),
        "ABNORMAL" => Some(RefundStatus::Abnormal),
        "CLOSED" => Some(RefundStatus::Closed),
        _ => None,
    }
}

/// An amount in fen as the reports write it (`3.50 CNY`), or `N fen` when
/// it is not one (negative).
#[must_use]
pub fn yuan(fen: i64) -> String {
    Fen::new(fen).map_or_else(|_| format!("{fen} fen"), |f| f.to_string())
}

/// The transaction a payment row stands for, as a payment notification
/// would carry it.
fn transaction_of(row: &BillRow) -> Transaction {
    Transaction {
        trade_state: TradeState::Success,
        trade_state_desc: None,
        out_trade_no: Some(row.out_trade_no.clone()),
        transaction_id: Some(row.transaction_id.clone()),
        mchid: row.mchid.clone(),
        appid: None,
        trade_type: None,
        bank_type: None,
        attach: row.attach.clone(),
        success_time: Some(row.trade_time.to_rfc3339()),
        payer: None,
        amount: Some(Amount {
            total: Some(payment_fen(row)),
            payer_total: Some(row.settlement_fen),
            currency: Some(row.currency.clone().unwrap_or_else(|| "CNY".into())),
            payer_currency: None,
        }),
    }
}

struct Comparison<'c> {
    conn: &'c mut PgConnection,
    run: i64,
    date: NaiveDate,
    report: Report,
}

impl Comparison<'_> {
    fn discrepancy(&mut self, d: NewDiscrepancy) -> Result<(), StoreError> {
        let (id, new) = store::record_discrepancy(self.conn, self.run, self.date, &d)?;
        if new {
            log::warn!(
                order_no:% = d.order_no,
                outcome = "discrepancy";
                "reconcile {}: DISCREPANCY {} ({}): ours: {}; bill: {}",
                self.date, d.kind, d.order_no, d.ours, d.theirs
            );
        }
        self.report.discrepancies.push(Found {
            id,
            kind: d.kind.as_str(),
            subject: d.subject,
            order_no: d.order_no,
            ours: d.ours,
            bill: d.theirs,
            known: !new,
        });
        Ok(())
    }

    fn acted(&mut self, order_no: &OrderNo, what: String) -> Result<(), StoreError> {
        store::note_reconciled(
            self.conn,
            order_no,
            &format!("bill of {}: {what}", self.date),
        )?;
        log::info!(
            order_no:% = order_no,
            outcome = "reconciled";
            "reconcile {}: order {order_no}: {what}",
            self.date
        );
        self.report.acted.push(Acted {
            order_no: order_no.to_string(),
            what,
        });
        Ok(())
    }

    fn payment_row(&mut self, row: &BillRow) -> Result<(), StoreError> {
        let amount = payment_fen(row);
        let theirs = match row.currency.as_deref() {
            // Fen's display names CNY already.
            None | Some("CNY") => format!(
                "line {}: transaction {} for order {}, {}",
                row.line,
                row.transaction_id,
                row.out_trade_no,
                yuan(amount)
            ),
            Some(other) => format!(
                "line {}: transaction {} for order {}, {amount} fen in {other}",
                row.line, row.transaction_id, row.out_trade_no
            ),
        };
        let differs = |ours: String| NewDiscrepancy {
            kind: DiscrepancyKind::PaymentDiffers,
            subject: row.transaction_id.clone(),
            order_no: row.out_trade_no.clone(),
            ours,
            theirs: theirs.clone(),
        };
        if let Some(p) = store::payment_by_transaction(self.conn, &row.transaction_id)? {
            if p.order_no == row.out_trade_no
                && p.amount_fen == amount
                && row.currency.as_deref().is_none_or(|c| c == "CNY")
            {
                self.report.matched += 1;
                return Ok(());
            }
            return self.discrepancy(differs(format!(
                "transaction {} recorded for order {}, {}",
                p.transaction_id,
                p.order_no,
                yuan(p.amount_fen)
            )));
        }
        let order = match OrderNo::parse(&row.out_trade_no) {
            Ok(no) => domain::find_order(self.conn, &no)?,
            Err(_) => None,
        };
        let Some(order) = order else {
            return self.discrepancy(NewDiscrepancy {
                kind: DiscrepancyKind::UnknownOrder,
                subject: row.transaction_id.clone(),
                order_no: row.out_trade_no.clone(),
                ours: "no order with this number".into(),
                theirs,
            });
        };
        if let Some(other) = domain::payments_of(self.conn, &order.order_no)?.first() {
            return self.discrepancy(differs(format!(
                "order paid with another transaction, {} for {}",
                other.transaction_id, other.amount
            )));
        }
        if amount != order.total.get() || row.currency.as_deref().is_some_and(|c| c != "CNY") {
            return self.discrepancy(differs(format!(
                "order {} ({}) totals {}, no payment recorded",
                order.order_no, order.status, order.total
            )));
        }
        // Paid at WeChat Pay, unknown here: a lost notification. The same
        // path as a late one.
        match record_payment(self.conn, &order, &transaction_of(row))? {
            Recorded::Paid => self.acted(
                &order.order_no,
                format!(
                    "paid at WeChat Pay (transaction {}, {}) but not recorded here: recorded, the order is paid",
                    row.transaction_id,
                    yuan(amount)
                ),
            ),
            Recorded::PaidAfterClose {
                newly_recorded: true,
            } => self.acted(
                &order.order_no,
                format!(
                    "paid at WeChat Pay (transaction {}, {}) after the order was closed here: recorded as paid after close, refund created",
                    row.transaction_id,
                    yuan(amount)
                ),
            ),
            // Recorded meanwhile (a notification or the worker got there).
            Recorded::AlreadyPaid | Recorded::PaidAfterClose { .. } => {
                self.report.matched += 1;
                Ok(())
            }
            Recorded::NeedsHuman { anomaly, detail } => self.discrepancy(differs(format!(
                "not recorded: {anomaly}: {detail}"
            ))),
            Recorded::NotFound => self.discrepancy(NewDiscrepancy {
                kind: DiscrepancyKind::UnknownOrder,
                subject: row.transaction_id.clone(),
                order_no: row.out_trade_no.clone(),
                ours: "no order with this number".into(),
                theirs,
            }),
        }
    }

    fn refund_row(&mut self, row: &BillRow) -> Result<(), StoreError> {
        let Some(r) = &row.refund else {
            return Ok(());
        };
        let amount = refund_fen(row);
        // What the discrepancy is about: the refund's numbers, else (a row
        // naming neither) the transaction and the line.
        let name = r
            .out_refund_no
            .clone()
            .or_else(|| r.refund_id.clone())
            .unwrap_or_else(|| format!("{} line {}", row.transaction_id, row.line));
        let theirs = format!(
            "line {}: refund {} (WeChat Pay refund {}) of transaction {} for order {}, {}, {}",
            row.line,
            r.out_refund_no.as_deref().unwrap_or("-"),
            r.refund_id.as_deref().unwrap_or("-"),
            row.transaction_id,
            row.out_trade_no,
            yuan(amount),
            r.status.as_deref().unwrap_or("no status")
        );
        let Some(ours) = self.our_refund(r)? else {
            let order_known = match OrderNo::parse(&row.out_trade_no) {
                Ok(no) => domain::find_order(self.conn, &no)?.is_some(),
                Err(_) => false,
            };
            return self.discrepancy(NewDiscrepancy {
                kind: if order_known {
                    DiscrepancyKind::UnknownRefund
                } else {
                    DiscrepancyKind::UnknownOrder
                },
                subject: name,
                order_no: row.out_trade_no.clone(),
                ours: if order_known {
                    "no refund with this number was asked for here".into()
                } else {
                    "no order with this number".into()
                },
                theirs,
            });
        };
        if ours.amount.get() != amount
            || ours.transaction_id != row.transaction_id
            || ours.order_no.as_str() != row.out_trade_no
        {
            return self.discrepancy(NewDiscrepancy {
                kind: DiscrepancyKind::RefundDiffers,
                subject: ours.out_refund_no.clone(),
                order_no: ours.order_no.to_string(),
                ours: format!(
                    "refund {} of transaction {} for order {}, {}, {}",
                    ours.out_refund_no,
                    ours.transaction_id,
                    ours.order_no,
                    ours.amount,
                    ours.status
                ),
                theirs,
            });
        }
        let Some(status) = refund_status(r.status.as_deref()) else {
            self.report.matched += 1;
            return Ok(());
        };
        let next_check = Utc::now() + chrono::Duration::minutes(1);
        match domain::record_refund_status(
            self.conn,
            &ours.out_refund_no,
            status,
            r.refund_id.as_deref(),
            next_check,
        )? {
            RefundUpdate::Moved { from } => self.acted(
                &ours.order_no,
                format!(
                    "refund {} is {status} in the bill: moved from {from}",
                    ours.out_refund_no
                ),
            ),
            RefundUpdate::Unchanged { .. } | RefundUpdate::NotFound => {
                self.report.matched += 1;
                Ok(())
            }
        }
    }

    /// Our refund that a bill row names, by `out_refund_no`, else by
    /// WeChat Pay's refund id.
    fn our_refund(&mut self, r: &BillRefund) -> Result<Option<domain::Refund>, StoreError> {
        if let Some(no) = r.out_refund_no.as_deref() {
            if let Some(ours) = domain::find_refund(self.conn, no)? {
                return Ok(Some(ours));
            }
        }
        match r.refund_id.as_deref() {
            Some(id) => match store::refund_by_refund_id(self.conn, id)? {
                Some(no) => domain::find_refund(self.conn, &no),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Every payment and refund recorded here for the day must be in the
    /// day's bill, or the neighbouring day's near midnight. One whose
    /// neighbouring day has no finished run yet is deferred to that run.
    fn not_in_bill(&mut self) -> Result<(), StoreError> {
        let date = self.date;
        let (start, end) = store::day_bounds(date);
        let days = [
            date.pred_opt().unwrap_or(date),
            date,
            date.succ_opt().unwrap_or(date),
        ];
        let mut known = store::known_bill_days(self.conn, &days)?;
        known.insert(date);
        let (bill_payments, bill_refunds) = store::bill_keys(self.conn, &days)?;
        let margin = store::MIDNIGHT_MARGIN;
        for p in store::payments_between(self.conn, start - margin, end + margin)? {
            let candidates = store::bill_days_of(p.success_time);
            if !candidates.contains(&date) || bill_payments.contains(&p.transaction_id) {
                continue;
            }
            if !candidates.iter().all(|d| known.contains(d)) {
                self.report.deferred += 1;
                continue;
            }
            self.discrepancy(NewDiscrepancy {
                kind: DiscrepancyKind::PaymentNotInBill,
                subject: p.transaction_id.clone(),
                order_no: p.order_no.clone(),
                ours: format!(
                    "transaction {} for order {}, {}, succeeded {}{}",
                    p.transaction_id,
                    p.order_no,
                    yuan(p.amount_fen),
                    p.success_time
                        .with_timezone(&store::beijing())
                        .format("%Y-%m-%d %H:%M:%S"),
                    if p.paid_after_close {
                        " (paid after close)"
                    } else {
                        ""
                    }
                ),
                theirs: "not in the bill".into(),
            })?;
        }
        for r in store::refunds_accepted_between(self.conn, start - margin, end + margin)? {
            let candidates = store::bill_days_of(r.accepted_at);
            let in_bill = bill_refunds.contains(&r.out_refund_no)
                || r.refund_id
                    .as_ref()
                    .is_some_and(|id| bill_refunds.contains(id));
            if !candidates.contains(&date) || in_bill {
                continue;
            }
            if !candidates.iter().all(|d| known.contains(d)) {
                self.report.deferred += 1;
                continue;
            }
            self.discrepancy(NewDiscrepancy {
                kind: DiscrepancyKind::RefundNotInBill,
                subject: r.out_refund_no.clone(),
                order_no: r.order_no.clone(),
                ours: format!(
                    "refund {} for order {}, {}, accepted by WeChat Pay {}",
                    r.out_refund_no,
                    r.order_no,
                    yuan(r.amount_fen),
                    r.accepted_at
                        .with_timezone(&store::beijing())
                        .format("%Y-%m-%d %H:%M:%S")
                ),
                theirs: "not in the bill".into(),
            })?;
        }
        Ok(())
    }
}
