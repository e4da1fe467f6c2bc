//! Leaving `pending_payment`: closing unpaid and marking paid, with repeats.

use chrono::{SubsecRound, Utc};
use domain::testing::TestDb;
use domain::{
    close_unpaid, find_order, mark_paid, order_events, payments_of, record_anomaly, Anomaly,
    AnomalyOutcome, CloseOutcome, Fen, MarkPaidOutcome, OrderNo, OrderStatus, PaymentRecord,
    TransactionId,
};

use crate::{assert_conserved, load, order, stock_of};

pub(crate) fn payment(tx: &str, fen: i64) -> PaymentRecord {
    PaymentRecord {
        transaction_id: TransactionId::parse(tx).unwrap(),
        amount: Fen::new(fen).unwrap(),
        success_time: Utc::now(),
    }
}

fn event_kinds(conn: &mut domain::PgConnection, no: &OrderNo) -> Vec<String> {
    order_events(conn, no)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

#[test]
fn closing_gives_every_item_back_and_records_the_reason() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    load(&mut conn, "MUG", 5, 100);
    let o = order(&mut conn, &[("TEA", 3), ("MUG", 2)]);
    assert_eq!(
        (stock_of(&mut conn, "TEA"), stock_of(&mut conn, "MUG")),
        (7, 3)
    );

    let out = close_unpaid(&mut conn, &o.order_no, "unpaid at deadline", None).unwrap();
    assert_eq!(out, CloseOutcome::Closed { lines: 2, units: 5 });
    assert_eq!(
        (stock_of(&mut conn, "TEA"), stock_of(&mut conn, "MUG")),
        (10, 5)
    );
    let stored = find_order(&mut conn, &o.order_no).unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Closed);
    assert!(stored.closed_at.is_some());
    assert_eq!(stored.close_reason.as_deref(), Some("unpaid at deadline"));
    let events = order_events(&mut conn, &o.order_no).unwrap();
    assert_eq!(events[1].kind, "closed");
    assert_eq!(events[1].detail, "unpaid at deadline");
    assert_conserved(&mut conn);
}

#[test]
fn closing_twice_gives_stock_back_once() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let o = order(&mut conn, &[("TEA", 4)]);
    assert!(matches!(
        close_unpaid(&mut conn, &o.order_no, "x", None).unwrap(),
        CloseOutcome::Closed { .. }
    ));
    assert_eq!(
        close_unpaid(&mut conn, &o.order_no, "x", None).unwrap(),
        CloseOutcome::AlreadyClosed
    );
    assert_eq!(stock_of(&mut conn, "TEA"), 10);
    assert_eq!(event_kinds(&mut conn, &o.order_no), ["created", "closed"]);
    assert_conserved(&mut conn);
}

#[test]
fn closing_an_unknown_order_finds_nothing_and_changes_nothing() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let ghost = OrderNo::parse("ghost-order-1").unwrap();
    assert_eq!(
        close_unpaid(&mut conn, &ghost, "x", None).unwrap(),
        CloseOutcome::NotFound
    );
    assert_eq!(
        mark_paid(&mut conn, &ghost, &payment("tx-ghost", 1)).unwrap(),
        MarkPaidOutcome::NotFound
    );
    assert_eq!(stock_of(&mut conn, "TEA"), 10);
}

#[test]
fn a_paid_order_is_never_closed() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let o = order(&mut conn, &[("TEA", 2)]);
    assert_eq!(
        mark_paid(&mut conn, &o.order_no, &payment("tx-1", 200)).unwrap(),
        MarkPaidOutcome::Paid
    );
    assert_eq!(
        close_unpaid(&mut conn, &o.order_no, "x", None).unwrap(),
        CloseOutcome::AlreadyPaid
    );
    assert_eq!(stock_of(&mut conn, "TEA"), 8, "sold stock stays sold");
    assert_eq!(
        find_order(&mut conn, &o.order_no).unwrap().unwrap().status,
        OrderStatus::Paid
    );
    assert_conserved(&mut conn);
}

#[test]
fn marking_paid_records_the_payment_once() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 150);
    let o = order(&mut conn, &[("TEA", 2)]);
    let p = payment("4200000001202611260001", 300);
    assert_eq!(
        mark_paid(&mut conn, &o.order_no, &p).unwrap(),
        MarkPaidOutcome::Paid
    );
    assert_eq!(
        mark_paid(&mut conn, &o.order_no, &p).unwrap(),
        MarkPaidOutcome::AlreadyPaid
    );

    let stored = find_order(&mut conn, &o.order_no).unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Paid);
    assert_eq!(stored.paid_at, Some(p.success_time.trunc_subsecs(6)));
    let pays = payments_of(&mut conn, &o.order_no).unwrap();
    assert_eq!(pays.len(), 1);
    assert_eq!(pays[0].transaction_id.as_str(), "4200000001202611260001");
    assert_eq!(pays[0].amount.get(), 300);
    assert!(!pays[0].paid_after_close);
    assert_eq!(event_kinds(&mut conn, &o.order_no), ["created", "paid"]);
    assert_eq!(stock_of(&mut conn, "TEA"), 8);
    assert_conserved(&mut conn);
}

#[test]
fn a_payment_learned_after_close_is_recorded_for_refund_and_leaves_stock_alone() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let o = order(&mut conn, &[("TEA", 3)]);
    let _ = close_unpaid(&mut conn, &o.order_no, "unpaid", None).unwrap();
    let p = payment("tx-late", 300);
    assert_eq!(
        mark_paid(&mut conn, &o.order_no, &p).unwrap(),
        MarkPaidOutcome::PaidAfterClose {
            newly_recorded: true
        }
    );
    assert_eq!(
        mark_paid(&mut conn, &o.order_no, &p).unwrap(),
        MarkPaidOutcome::PaidAfterClose {
            newly_recorded: false
        }
    );
    let stored = find_order(&mut conn, &o.order_no).unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Closed, "status stays closed");
    assert_eq!(
        stock_of(&mut conn, "TEA"),
        10,
        "stock given back once, not taken again"
    );
    let pays = payments_of(&mut conn, &o.order_no).unwrap();
    assert_eq!(pays.len(), 1);
    assert!(pays[0].paid_after_close);
    assert_eq!(
        event_kinds(&mut conn, &o.order_no),
        ["created", "closed", "paid_after_close", "refund"]
    );
    // Its refund is queued with it, once, for the whole amount.
    let refunds = domain::refunds_of(&mut conn, &o.order_no).unwrap();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].status, domain::RefundStatus::Requested);
    assert_eq!(refunds[0].amount.get(), 300);
    assert_eq!(refunds[0].transaction_id, "tx-late");
    assert_conserved(&mut conn);
}

#[test]
fn a_transaction_id_of_another_order_is_reported_and_changes_nothing() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let first = order(&mut conn, &[("TEA", 1)]);
    let second = order(&mut conn, &[("TEA", 1)]);
    let closed = order(&mut conn, &[("TEA", 1)]);
    let _ = close_unpaid(&mut conn, &closed.order_no, "unpaid", None).unwrap();
    let p = payment("tx-shared", 100);
    assert_eq!(
        mark_paid(&mut conn, &first.order_no, &p).unwrap(),
        MarkPaidOutcome::Paid
    );
    for no in [&second.order_no, &closed.order_no] {
        assert_eq!(
            mark_paid(&mut conn, no, &p).unwrap(),
            MarkPaidOutcome::TransactionOfAnotherOrder {
                other: first.order_no.clone()
            }
        );
        assert!(payments_of(&mut conn, no).unwrap().is_empty());
    }
    let stored = find_order(&mut conn, &second.order_no).unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::PendingPayment, "unchanged");
    assert_eq!(event_kinds(&mut conn, &second.order_no), ["created"]);
    assert_eq!(
        event_kinds(&mut conn, &closed.order_no),
        ["created", "closed"]
    );
    assert_conserved(&mut conn);
}

#[test]
fn racing_orders_for_one_transaction_id_leave_exactly_one_payment() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 100, 100);
    let nos: Vec<OrderNo> = (0..8)
        .map(|_| order(&mut conn, &[("TEA", 1)]).order_no)
        .collect();
    let outcomes: Vec<MarkPaidOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = nos
            .iter()
            .map(|no| {
                let db = &db;
                s.spawn(move || mark_paid(&mut db.conn(), no, &payment("tx-raced", 100)).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let paid = outcomes
        .iter()
        .filter(|o| **o == MarkPaidOutcome::Paid)
        .count();
    assert_eq!(paid, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(
        o,
        MarkPaidOutcome::Paid | MarkPaidOutcome::TransactionOfAnotherOrder { .. }
    )));
    assert_conserved(&mut conn);
}

#[test]
fn an_anomaly_is_recorded_once_leaves_the_order_alone_and_is_listed() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let o = order(&mut conn, &[("TEA", 2)]);
    let detail = "WeChat Pay reports 100 fen CNY, the order's total is 200 fen";
    for expected in [AnomalyOutcome::Recorded, AnomalyOutcome::AlreadyRecorded] {
        assert_eq!(
            record_anomaly(&mut conn, &o.order_no, Anomaly::AmountMismatch, detail).unwrap(),
            expected
        );
    }
    let stored = find_order(&mut conn, &o.order_no).unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::PendingPayment);
    assert_eq!(stored.anomaly, Some(Anomaly::AmountMismatch));
    assert_eq!(stock_of(&mut conn, "TEA"), 8, "stock stays held");
    assert_eq!(event_kinds(&mut conn, &o.order_no), ["created", "anomaly"]);
    assert_eq!(domain::needs_human_count(&mut conn).unwrap(), 1);
    let listed = domain::needs_human(&mut conn, 10).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].order_no, o.order_no);
    assert!(listed[0].detail.contains(detail), "{:?}", listed[0].detail);
    assert_eq!(
        record_anomaly(
            &mut conn,
            &OrderNo::parse("NOSUCHORDER1").unwrap(),
            Anomaly::MissingAmount,
            "x"
        )
        .unwrap(),
        AnomalyOutcome::NotFound
    );
    // A trustworthy answer later settles it and clears the anomaly.
    assert_eq!(
        mark_paid(&mut conn, &o.order_no, &payment("tx-ok", 200)).unwrap(),
        MarkPaidOutcome::Paid
    );
    assert_eq!(domain::needs_human_count(&mut conn).unwrap(), 0);
    assert_conserved(&mut conn);
}

#[test]
fn a_recheck_is_scheduled_by_the_close_and_finished_once() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let o = order(&mut conn, &[("TEA", 1)]);
    let at = Utc::now().trunc_subsecs(6) + chrono::Duration::minutes(10);
    let _ = close_unpaid(&mut conn, &o.order_no, "ORDER_NOT_EXIST", Some(at)).unwrap();
    let stored = find_order(&mut conn, &o.order_no).unwrap().unwrap();
    assert_eq!(stored.recheck_at, Some(at));
    let later = at + chrono::Duration::seconds(1);
    let due = domain::rechecks_due(&mut conn, later, later, 0, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert!(domain::rechecks_due(&mut conn, at, later, 0, 10)
        .unwrap()
        .is_empty());
    assert!(domain::finish_recheck(&mut conn, &o.order_no, "nothing at WeChat Pay").unwrap());
    assert!(!domain::finish_recheck(&mut conn, &o.order_no, "again").unwrap());
    assert_eq!(
        event_kinds(&mut conn, &o.order_no),
        ["created", "closed", "recheck"]
    );
    assert!(domain::rechecks_due(&mut conn, later, later, 0, 10)
        .unwrap()
        .is_empty());
    // A recheck whose answer needs a human is left to the human.
    let odd = order(&mut conn, &[("TEA", 1)]);
    let _ = close_unpaid(&mut conn, &odd.order_no, "ORDER_NOT_EXIST", Some(at)).unwrap();
    assert_eq!(
        domain::rechecks_due(&mut conn, later, later, 0, 10)
            .unwrap()
            .len(),
        1
    );
    let _ = record_anomaly(&mut conn, &odd.order_no, Anomaly::AmountMismatch, "1 fen").unwrap();
    assert!(domain::rechecks_due(&mut conn, later, later, 0, 10)
        .unwrap()
        .is_empty());
    // A payment found after the close also ends the recheck.
    let p2 = order(&mut conn, &[("TEA", 1)]);
    let _ = close_unpaid(&mut conn, &p2.order_no, "ORDER_NOT_EXIST", Some(at)).unwrap();
    assert_eq!(
        mark_paid(&mut conn, &p2.order_no, &payment("tx-late-2", 100)).unwrap(),
        MarkPaidOutcome::PaidAfterClose {
            newly_recorded: true
        }
    );
    assert_eq!(
        find_order(&mut conn, &p2.order_no)
            .unwrap()
            .unwrap()
            .recheck_at,
        None
    );
    assert_conserved(&mut conn);
}
