//! Reconciliation against WeChat Pay's trade bill (issue 23), end to end:
//! the simulator serves the bill of its own payments and refunds (gzip,
//! SHA1, a link that expires), the store is the real PostgreSQL. A day is
//! seeded with every kind of row; each is found exactly once, the safe ones
//! are acted on through the existing paths, a second run changes nothing,
//! and a bill that cannot be trusted records nothing.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use diesel::prelude::*;
use domain::reconcile::{beijing_day, DiscrepancyKind};
use domain::{OrderNo, OrderStatus, PaymentRecord};
use service::reconcile::{reconcile_day, Patience, ReconcileError, Report};
use wechatpay_sim::{BillFaults, SimRefund};

use crate::support::ORDER_TOTAL_FEN;
use crate::Stack;

const QUICK: Patience = Patience {
    wait: Duration::from_secs(10),
    first_delay: Duration::from_millis(100),
};

/// Yesterday and today, Beijing time.
fn days() -> (NaiveDate, NaiveDate) {
    let today = beijing_day(Utc::now());
    (today.pred_opt().unwrap(), today)
}

/// `HH:MM:SS` of `day`, Beijing time, as RFC 3339.
fn at(day: NaiveDate, hms: &str) -> String {
    format!("{day}T{hms}+08:00")
}

fn utc(rfc3339: &str) -> chrono::DateTime<Utc> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

/// A transaction id in WeChat Pay's shape, unique per `n` and order.
fn txn(no: &OrderNo, n: u32) -> String {
    let digits: String = no.as_str().chars().filter(char::is_ascii_digit).collect();
    let tail = &digits[digits.len().saturating_sub(14)..];
    format!("42000{n:04}{tail:0>14}")
}

/// The simulator holds the order paid at `time` for `fen`.
fn paid_there(stack: &Stack, no: &str, transaction_id: &str, fen: i64, time: &str) {
    let _ = stack
        .sim
        .admin()
        .put_order(
            no,
            &wechatpay_sim::Order {
                trade_state: "SUCCESS".into(),
                amount_total: fen,
                transaction_id: Some(transaction_id.into()),
                success_time: Some(time.into()),
                description: Some("Tea, green, 2 x 50g".into()),
                ..Default::default()
            },
        )
        .unwrap();
}

/// The store records the order paid at `time` (as a notification would).
fn paid_here(stack: &Stack, no: &OrderNo, transaction_id: &str, time: &str) {
    let outcome = domain::mark_paid(
        &mut stack.db.conn(),
        no,
        &PaymentRecord {
            transaction_id: domain::TransactionId::parse(transaction_id).unwrap(),
            amount: domain::Fen::new(ORDER_TOTAL_FEN).unwrap(),
            success_time: utc(time),
        },
    )
    .unwrap();
    assert_eq!(outcome, domain::MarkPaidOutcome::Paid);
}

fn run(stack: &Stack, date: NaiveDate) -> Result<Report, ReconcileError> {
    let client = payment_client::Client::new(stack.payment_config()).unwrap();
    reconcile_day(
        stack.db.url(),
        &client,
        date,
        QUICK,
        &AtomicBool::new(false),
    )
}

/// Everything a run may change, to compare before and after.
#[derive(Debug, PartialEq, Eq)]
struct Books {
    orders: Vec<(String, String)>,
    payments: Vec<(String, i64, bool)>,
    refunds: Vec<(String, String)>,
    discrepancies: Vec<(String, String, bool)>,
    events: i64,
    stock: i64,
}

fn books(stack: &Stack) -> Books {
    use domain::schema::{discrepancies, order_events, orders, payments, refunds, skus};
    let mut c = stack.db.conn();
    Books {
        orders: orders::table
            .select((orders::order_no, orders::status))
            .order(orders::order_no)
            .load(&mut c)
            .unwrap(),
        payments: payments::table
            .select((
                payments::transaction_id,
                payments::amount_fen,
                payments::paid_after_close,
            ))
            .order(payments::transaction_id)
            .load(&mut c)
            .unwrap(),
        refunds: refunds::table
            .select((refunds::out_refund_no, refunds::status))
            .order(refunds::out_refund_no)
            .load(&mut c)
            .unwrap(),
        discrepancies: discrepancies::table
            .select((
                discrepancies::kind,
                discrepancies::subject,
                discrepancies::resolved_at.is_not_null(),
            ))
            .order((discrepancies::kind, discrepancies::subject))
            .load(&mut c)
            .unwrap(),
        events: order_events::table.count().get_result(&mut c).unwrap(),
        stock: skus::table
            .select(diesel::dsl::sum(skus::stock))
            .first::<Option<i64>>(&mut c)
            .unwrap()
            .unwrap_or(0),
    }
}

fn found(report: &Report, kind: DiscrepancyKind) -> Vec<String> {
    report
        .discrepancies
        .iter()
        .filter(|d| d.kind == kind.as_str())
        .map(|d| d.subject.clone())
        .collect()
}

fn open_kinds(stack: &Stack) -> Vec<(DiscrepancyKind, i64)> {
    domain::reconcile::open_discrepancy_counts(&mut stack.db.conn())
        .unwrap()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The seeded day: which order stands for which case.
struct Seeded {
    matched: OrderNo,
    pending_paid_there: OrderNo,
    closed_paid_there: OrderNo,
    not_in_bill: OrderNo,
    other_amount: OrderNo,
    at_235959: OrderNo,
    at_000001: OrderNo,
    late_here: OrderNo,
    refund_ours: OrderNo,
    refund_ours_no: String,
}

// One scenario, read top to bottom: each case beside its comment.
#[allow(clippy::too_many_lines)]
fn seed(stack: &Stack, day: NaiveDate, next: NaiveDate) -> Seeded {
    let mut c = stack.db.conn();

    // Matched: paid here and there, same transaction and amount.
    let matched = stack.order();
    let t = txn(&matched, 1);
    paid_there(
        stack,
        matched.as_str(),
        &t,
        ORDER_TOTAL_FEN,
        &at(day, "12:00:00"),
    );
    paid_here(stack, &matched, &t, &at(day, "12:00:00"));

    // Paid at WeChat Pay, the notification lost: a pending order here...
    let pending_paid_there = stack.order();
    paid_there(
        stack,
        pending_paid_there.as_str(),
        &txn(&pending_paid_there, 2),
        ORDER_TOTAL_FEN,
        &at(day, "13:00:00"),
    );
    // ... and an order closed here (stock back) that was paid there.
    let closed_paid_there = stack.order();
    let _ = domain::close_unpaid(&mut c, &closed_paid_there, "test: closed", None).unwrap();
    paid_there(
        stack,
        closed_paid_there.as_str(),
        &txn(&closed_paid_there, 3),
        ORDER_TOTAL_FEN,
        &at(day, "14:00:00"),
    );

    // Recorded here, unknown to WeChat Pay's bill.
    let not_in_bill = stack.order();
    paid_here(
        stack,
        &not_in_bill,
        &txn(&not_in_bill, 4),
        &at(day, "15:00:00"),
    );

    // WeChat Pay took another amount than the order's total.
    let other_amount = stack.order();
    paid_there(
        stack,
        other_amount.as_str(),
        &txn(&other_amount, 5),
        ORDER_TOTAL_FEN + 50,
        &at(day, "16:00:00"),
    );

    // A refund made by hand in the merchant platform: only in the bill.
    let _ = stack
        .sim
        .admin()
        .insert_refund(&SimRefund {
            out_refund_no: "MANUAL-REFUND-1".into(),
            transaction_id: t.clone(),
            out_trade_no: matched.to_string(),
            status: "SUCCESS".into(),
            refund: 30,
            total: ORDER_TOTAL_FEN,
            payer_total: ORDER_TOTAL_FEN,
            currency: "CNY".into(),
            create_time: at(day, "17:00:00"),
            ..Default::default()
        })
        .unwrap();

    // A refund of ours WeChat Pay has, still `requested` here: moved forward.
    let refund_ours = stack.order();
    let _ = domain::close_unpaid(&mut c, &refund_ours, "test: closed", None).unwrap();
    let t8 = txn(&refund_ours, 8);
    let outcome = domain::mark_paid(
        &mut c,
        &refund_ours,
        &PaymentRecord {
            transaction_id: domain::TransactionId::parse(&t8).unwrap(),
            amount: domain::Fen::new(ORDER_TOTAL_FEN).unwrap(),
            success_time: utc(&at(day, "09:00:00")),
        },
    )
    .unwrap();
    assert!(matches!(
        outcome,
        domain::MarkPaidOutcome::PaidAfterClose { .. }
    ));
    paid_there(
        stack,
        refund_ours.as_str(),
        &t8,
        ORDER_TOTAL_FEN,
        &at(day, "09:00:00"),
    );
    let refund_ours_no = domain::refunds_of(&mut c, &refund_ours).unwrap()[0]
        .out_refund_no
        .clone();
    let _ = stack
        .sim
        .admin()
        .insert_refund(&SimRefund {
            out_refund_no: refund_ours_no.clone(),
            transaction_id: t8,
            out_trade_no: refund_ours.to_string(),
            status: "SUCCESS".into(),
            refund: ORDER_TOTAL_FEN,
            total: ORDER_TOTAL_FEN,
            payer_total: ORDER_TOTAL_FEN,
            currency: "CNY".into(),
            create_time: at(day, "09:05:00"),
            ..Default::default()
        })
        .unwrap();

    // Either side of midnight.
    let at_235959 = stack.order();
    let t = txn(&at_235959, 6);
    paid_there(
        stack,
        at_235959.as_str(),
        &t,
        ORDER_TOTAL_FEN,
        &at(day, "23:59:59"),
    );
    paid_here(stack, &at_235959, &t, &at(day, "23:59:59"));
    let at_000001 = stack.order();
    let t = txn(&at_000001, 7);
    paid_there(
        stack,
        at_000001.as_str(),
        &t,
        ORDER_TOTAL_FEN,
        &at(next, "00:00:01"),
    );
    paid_here(stack, &at_000001, &t, &at(next, "00:00:01"));

    // Recorded here at 23:59:57, in no bill: missing, but only once the
    // next day's bill has been looked at too.
    let late_here = stack.order();
    paid_here(stack, &late_here, &txn(&late_here, 9), &at(day, "23:59:57"));

    // A payment for an order number that is not ours.
    paid_there(
        stack,
        "NOTOURS0001",
        "4200000000000000000000000001",
        990,
        &at(day, "10:00:00"),
    );

    Seeded {
        matched,
        pending_paid_there,
        closed_paid_there,
        not_in_bill,
        other_amount,
        at_235959,
        at_000001,
        late_here,
        refund_ours,
        refund_ours_no,
    }
}

#[test]
fn a_seeded_day_is_reconciled_each_row_once_and_a_second_run_changes_nothing() {
    let stack = Stack::new();
    let (day, today) = days();
    let s = seed(&stack, day, today);
    let stock_before = stack.stock("TEA");

    let r = run(&stack, day).unwrap();
    assert_eq!(r.outcome, "reconciled");
    // Payments: matched, two paid there, other amount, the refunded one,
    // 23:59:59, not ours; refunds: the manual one and ours: 9 rows
    // (00:00:01 is the next day's).
    assert_eq!(r.bill_rows, 9, "{r:#?}");
    assert_eq!((r.payment_rows, r.refund_rows), (7, 2), "{r:#?}");
    assert_eq!(
        r.matched, 3,
        "matched, 23:59:59, the refunded payment: {r:#?}"
    );
    let acted: Vec<&str> = r.acted.iter().map(|a| a.order_no.as_str()).collect();
    assert_eq!(acted.len(), 3, "{r:#?}");
    for no in [&s.pending_paid_there, &s.closed_paid_there, &s.refund_ours] {
        assert!(acted.contains(&no.as_str()), "{no} acted on: {r:#?}");
    }
    assert_eq!(
        found(&r, DiscrepancyKind::PaymentNotInBill),
        [txn(&s.not_in_bill, 4)]
    );
    assert_eq!(
        found(&r, DiscrepancyKind::PaymentDiffers),
        [txn(&s.other_amount, 5)]
    );
    assert_eq!(found(&r, DiscrepancyKind::UnknownRefund).len(), 1, "{r:#?}");
    assert_eq!(
        found(&r, DiscrepancyKind::UnknownOrder),
        ["4200000000000000000000000001"]
    );
    assert_eq!(r.discrepancies.len(), 4, "{r:#?}");
    assert!(r.discrepancies.iter().all(|d| !d.known));
    // 00:00:01 and 23:59:57 wait for the next day's bill.
    assert_eq!(r.deferred, 2, "{r:#?}");

    // The safe ones went through the existing paths.
    assert_eq!(stack.status(&s.pending_paid_there), OrderStatus::Paid);
    assert_eq!(stack.status(&s.closed_paid_there), OrderStatus::Closed);
    let mut c = stack.db.conn();
    let p = domain::payments_of(&mut c, &s.closed_paid_there).unwrap();
    assert_eq!(p.len(), 1);
    assert!(p[0].paid_after_close);
    let refunds = domain::refunds_of(&mut c, &s.closed_paid_there).unwrap();
    assert_eq!(refunds.len(), 1, "one refund of the payment after close");
    assert_eq!(refunds[0].amount.get(), ORDER_TOTAL_FEN);
    assert_eq!(
        domain::find_refund(&mut c, &s.refund_ours_no)
            .unwrap()
            .unwrap()
            .status,
        domain::RefundStatus::Succeeded
    );
    // Discrepancies change nothing.
    assert_eq!(stack.status(&s.other_amount), OrderStatus::PendingPayment);
    assert!(domain::payments_of(&mut c, &s.other_amount)
        .unwrap()
        .is_empty());
    assert_eq!(stack.status(&s.matched), OrderStatus::Paid);
    assert_eq!(stack.status(&s.at_235959), OrderStatus::Paid);
    // Stock: the paid pending order keeps its stock sold, the closed one
    // had given it back already; nothing moved.
    assert_eq!(stack.stock("TEA"), stock_before);
    stack.assert_conserved();
    // An event on each order touched.
    for no in [
        &s.pending_paid_there,
        &s.closed_paid_there,
        &s.not_in_bill,
        &s.other_amount,
        &s.matched,
        &s.refund_ours,
    ] {
        let kinds: Vec<String> = domain::order_events(&mut c, no)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(kinds.contains(&"reconcile".to_owned()), "{no}: {kinds:?}");
    }

    // The same date again: nothing changes, everything is known.
    let before = books(&stack);
    let again = run(&stack, day).unwrap();
    assert_eq!(books(&stack), before);
    assert!(again.acted.is_empty(), "{again:#?}");
    assert_eq!(again.matched, 6, "what was acted on is now matched");
    assert_eq!(again.discrepancies.len(), 4);
    assert!(again.discrepancies.iter().all(|d| d.known));
    assert_eq!(again.new_discrepancies(), 0);

    // The next day: 00:00:01 is in its bill; 23:59:57 is in neither bill.
    let next = run(&stack, today).unwrap();
    assert_eq!(next.deferred, 0, "{next:#?}");
    assert_eq!(
        found(&next, DiscrepancyKind::PaymentNotInBill),
        [txn(&s.late_here, 9)],
        "{next:#?}"
    );
    assert!(
        !found(&next, DiscrepancyKind::PaymentNotInBill).contains(&txn(&s.at_000001, 7)),
        "{next:#?}"
    );
    assert!(next.matched >= 1, "{next:#?}");
    let open: i64 = open_kinds(&stack).iter().map(|(_, n)| n).sum();
    assert_eq!(open, 5, "{:?}", open_kinds(&stack));
    stack.assert_conserved();

    status_shows(&stack, today);
}

/// What `order-producer status` and the metrics read after the seeded day
/// and the next one were reconciled.
fn status_shows(stack: &Stack, today: NaiveDate) {
    let report = order_producer::status::Report::gather(
        &mut stack.db.conn(),
        stack.vhost.url(),
        &stack.topology,
    )
    .unwrap();
    let rec = &report.snapshot.reconciliation;
    assert_eq!(rec.last_day, Some(today));
    assert_eq!(rec.open(), 5);
    assert_eq!(rec.open_discrepancies["payment_not_in_bill"], 2);
    assert_eq!(rec.rows["acted"], 3);
    let mut text = Vec::new();
    report.write_text(&mut text, stack.vhost.url()).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(&format!(
            "reconciled with WeChat Pay's trade bill up to: {today}"
        )),
        "{text}"
    );
    assert!(
        text.contains("open discrepancies with the bill: 5 (payment_differs 1, payment_not_in_bill 2, unknown_order 1, unknown_refund 1)"),
        "{text}"
    );
}

#[test]
fn a_bill_that_cannot_be_trusted_records_nothing_and_says_why() {
    let stack = Stack::new();
    let (day, _) = days();
    let no = stack.order();
    paid_there(
        &stack,
        no.as_str(),
        &txn(&no, 1),
        ORDER_TOTAL_FEN,
        &at(day, "11:00:00"),
    );
    let before = books(&stack);
    for (faults, says) in [
        (
            BillFaults {
                wrong_hash: true,
                ..Default::default()
            },
            "SHA1",
        ),
        (
            BillFaults {
                truncate_gzip: true,
                ..Default::default()
            },
            "truncated",
        ),
        (
            BillFaults {
                summary_disagrees: true,
                ..Default::default()
            },
            "summary",
        ),
    ] {
        stack.sim.admin().set_bill_faults(&faults).unwrap();
        let e = run(&stack, day).unwrap_err();
        let text = format!("{e:#}");
        assert!(matches!(e, ReconcileError::Bill { .. }), "{text}");
        assert!(text.contains(says), "{says}: {text}");
        assert_eq!(books(&stack), before, "{says}: nothing recorded");
        let mut c = stack.db.conn();
        let rows: i64 = domain::schema::bill_rows::table
            .count()
            .get_result(&mut c)
            .unwrap();
        assert_eq!(rows, 0, "{says}");
        let last = domain::reconcile::last_run(&mut c).unwrap().unwrap();
        assert_eq!(last.outcome, "failed");
        assert!(last.error.unwrap().contains(says));
        assert!(domain::reconcile::last_reconciled(&mut c)
            .unwrap()
            .is_none());
    }
    // Intact again: the day reconciles and the payment is recorded.
    stack
        .sim
        .admin()
        .set_bill_faults(&BillFaults::default())
        .unwrap();
    let r = run(&stack, day).unwrap();
    assert_eq!(r.acted.len(), 1, "{r:#?}");
    assert_eq!(stack.status(&no), OrderStatus::Paid);
}

#[test]
fn a_bill_still_being_created_is_waited_for_and_a_day_without_trades_is_no_error() {
    let stack = Stack::new();
    let (day, _) = days();
    let no = stack.order();
    paid_there(
        &stack,
        no.as_str(),
        &txn(&no, 1),
        ORDER_TOTAL_FEN,
        &at(day, "11:00:00"),
    );
    stack
        .sim
        .admin()
        .set_bill_faults(&BillFaults {
            statement_creating: 2,
            ..Default::default()
        })
        .unwrap();
    let r = run(&stack, day).unwrap();
    assert_eq!(r.outcome, "reconciled");
    assert_eq!(r.acted.len(), 1);

    // Still creating after the patience is spent: a clear failure.
    stack
        .sim
        .admin()
        .set_bill_faults(&BillFaults {
            statement_creating: 1000,
            ..Default::default()
        })
        .unwrap();
    let client = payment_client::Client::new(stack.payment_config()).unwrap();
    let e = reconcile_day(
        stack.db.url(),
        &client,
        day,
        Patience {
            wait: Duration::from_millis(500),
            first_delay: Duration::from_millis(100),
        },
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("STATEMENT_CREATING"), "{e:#}");
    stack
        .sim
        .admin()
        .set_bill_faults(&BillFaults::default())
        .unwrap();

    // Two days back nothing happened at WeChat Pay (NO_STATEMENT_EXIST),
    // but a payment is recorded here for that day: it is missing.
    let quiet = day.pred_opt().unwrap();
    let here = stack.order();
    paid_here(&stack, &here, &txn(&here, 2), &at(quiet, "12:00:00"));
    let r = run(&stack, quiet).unwrap();
    assert_eq!(r.outcome, "no_statement");
    assert_eq!(r.bill_rows, 0);
    assert_eq!(
        found(&r, DiscrepancyKind::PaymentNotInBill),
        [txn(&here, 2)]
    );
}

#[test]
fn two_runs_of_one_date_at_once_find_everything_once() {
    let stack = Stack::new();
    let (day, _) = days();
    let mut nos = Vec::new();
    for i in 0..5 {
        let no = stack.order();
        paid_there(
            &stack,
            no.as_str(),
            &txn(&no, i),
            ORDER_TOTAL_FEN,
            &at(day, "11:00:00"),
        );
        nos.push(no);
    }
    paid_there(
        &stack,
        "NOTOURS0002",
        "4200000000000000000000000002",
        10,
        &at(day, "10:00:00"),
    );
    let reports: Vec<Report> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2).map(|_| scope.spawn(|| run(&stack, day))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    let acted: usize = reports.iter().map(|r| r.acted.len()).sum();
    assert_eq!(acted, 5, "each payment recorded by one run: {reports:#?}");
    let new: usize = reports.iter().map(Report::new_discrepancies).sum();
    assert_eq!(new, 1, "{reports:#?}");
    for no in &nos {
        assert_eq!(stack.status(no), OrderStatus::Paid);
        assert_eq!(
            domain::payments_of(&mut stack.db.conn(), no).unwrap().len(),
            1
        );
    }
    stack.assert_conserved();
}

#[test]
fn the_command_reports_as_text_or_json_and_exits_by_what_happened() {
    let stack = Stack::new();
    let (day, today) = days();
    let no = stack.order();
    paid_there(
        &stack,
        no.as_str(),
        &txn(&no, 1),
        ORDER_TOTAL_FEN,
        &at(day, "11:00:00"),
    );
    let date = day.to_string();

    let out = stack
        .worker_command(&["reconcile", "--date", &date, "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["date"], date.as_str());
    assert_eq!(v["outcome"], "reconciled");
    assert_eq!(v["bill_rows"], 1);
    assert_eq!(v["acted"][0]["order_no"], no.as_str());
    assert_eq!(stack.status(&no), OrderStatus::Paid);

    // Text, the second time: the payment is matched now.
    let out = stack
        .worker_command(&["reconcile", "--date", &date])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("{date}: bill of 1 rows (1 payments, 0 refunds")),
        "{text}"
    );
    assert!(text.contains("matched        1"), "{text}");
    assert!(text.contains("acted on       0"), "{text}");

    // A file that fails its hash: exit 1, saying so, nothing recorded.
    stack
        .sim
        .admin()
        .set_bill_faults(&BillFaults {
            wrong_hash: true,
            ..Default::default()
        })
        .unwrap();
    let out = stack
        .worker_command(&["reconcile", "--date", &date])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SHA1"), "{stderr}");
    assert!(stderr.contains("nothing was recorded"), "{stderr}");

    // Bad dates are bad usage.
    let tomorrow = today.succ_opt().unwrap().to_string();
    for (args, says) in [
        (vec!["reconcile", "--date", tomorrow.as_str()], "future"),
        (vec!["reconcile", "--date", "2026-02-30"], "YYYY-MM-DD"),
        (vec!["reconcile", "--date", "2020-01-01"], "three months"),
    ] {
        let out = stack.worker_command(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn without_a_date_the_days_missed_or_failed_in_the_last_week_come_first() {
    let stack = Stack::new();
    let (yesterday, _) = days();
    let back = |n: i64| yesterday - chrono::Duration::days(n);
    // Nothing reconciled yet: only yesterday.
    let mut c = stack.db.conn();
    assert_eq!(
        order_timeout_worker::reconcile::days_to_reconcile(&mut c, yesterday).unwrap(),
        [yesterday]
    );
    // Reconciliation began 4 days before yesterday; 3 days before failed;
    // 2 and 1 days before were never run.
    run(&stack, back(4)).unwrap();
    stack
        .sim
        .admin()
        .set_bill_faults(&BillFaults {
            wrong_hash: true,
            ..Default::default()
        })
        .unwrap();
    let no = stack.order();
    paid_there(
        &stack,
        no.as_str(),
        &txn(&no, 1),
        ORDER_TOTAL_FEN,
        &at(back(3), "11:00:00"),
    );
    assert!(run(&stack, back(3)).is_err());
    stack
        .sim
        .admin()
        .set_bill_faults(&BillFaults::default())
        .unwrap();
    assert_eq!(
        order_timeout_worker::reconcile::days_to_reconcile(&mut c, yesterday).unwrap(),
        [back(3), back(2), back(1), yesterday]
    );

    let out = stack
        .worker_command(&["reconcile", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let dates: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["date"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        dates,
        [back(3), back(2), back(1), yesterday].map(|d| d.to_string())
    );
    // The failed day's payment is recorded now.
    assert_eq!(stack.status(&no), OrderStatus::Paid);
    assert_eq!(
        order_timeout_worker::reconcile::days_to_reconcile(&mut c, yesterday).unwrap(),
        [yesterday]
    );
}

#[test]
fn a_row_for_another_merchant_is_never_acted_on() {
    let stack = Stack::new();
    let (day, _) = days();
    let no = stack.order();
    let bill_of = |mchid: &str| {
        payment_client::parse_bill(&format!(
            "交易时间,商户号,微信订单号,商户订单号,交易状态,货币种类,应结订单金额,订单金额\r\n\
             `{day} 11:00:00,`{mchid},`{},`{no},`SUCCESS,`CNY,`1.00,`1.00\r\n\
             总交易单数,应结订单总金额,订单总金额\r\n`1,`1.00,`1.00\r\n",
            txn(&no, 1)
        ))
        .unwrap()
    };
    let compare = |mchid: &str| {
        let mut c = stack.db.conn();
        let run = domain::reconcile::start_run(&mut c, day).unwrap();
        service::reconcile::compare(
            &mut c,
            run,
            day,
            wechatpay_sim::DEFAULT_MCHID,
            Some(&bill_of(mchid)),
        )
        .unwrap()
    };
    // The payment would settle the order, but the row is another merchant's.
    let r = compare("1999999999");
    assert!(r.acted.is_empty(), "{r:#?}");
    assert_eq!(found(&r, DiscrepancyKind::UnexpectedRow).len(), 1, "{r:#?}");
    assert_eq!(stack.status(&no), OrderStatus::PendingPayment);
    assert!(domain::payments_of(&mut stack.db.conn(), &no)
        .unwrap()
        .is_empty());
    // The same row naming us is acted on.
    let r = compare(wechatpay_sim::DEFAULT_MCHID);
    assert_eq!(r.acted.len(), 1, "{r:#?}");
    assert_eq!(stack.status(&no), OrderStatus::Paid);
    stack.assert_conserved();
}
