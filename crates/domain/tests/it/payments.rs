//! Leaving `pending_payment`: closing unpaid and marking paid, with repeats.

use chrono::{SubsecRound, Utc};
use domain::testing::TestDb;
use domain::{
    close_unpaid, find_order, mark_paid, order_events, payments_of, CloseOutcome, ConstraintKind,
    Fen, MarkPaidOutcome, OrderNo, OrderStatus, PaymentRecord, StoreError, TransactionId,
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

    let out = close_unpaid(&mut conn, &o.order_no, "unpaid at deadline").unwrap();
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
        close_unpaid(&mut conn, &o.order_no, "x").unwrap(),
        CloseOutcome::Closed { .. }
    ));
    assert_eq!(
        close_unpaid(&mut conn, &o.order_no, "x").unwrap(),
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
        close_unpaid(&mut conn, &ghost, "x").unwrap(),
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
        close_unpaid(&mut conn, &o.order_no, "x").unwrap(),
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
    assert_eq!(pays[0].transaction_id, "4200000001202611260001");
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
    let _ = close_unpaid(&mut conn, &o.order_no, "unpaid").unwrap();
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
        ["created", "closed", "paid_after_close"]
    );
    assert_conserved(&mut conn);
}

#[test]
fn a_transaction_id_of_another_order_is_a_typed_error_and_changes_nothing() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let first = order(&mut conn, &[("TEA", 1)]);
    let second = order(&mut conn, &[("TEA", 1)]);
    let p = payment("tx-shared", 100);
    assert_eq!(
        mark_paid(&mut conn, &first.order_no, &p).unwrap(),
        MarkPaidOutcome::Paid
    );
    let err = mark_paid(&mut conn, &second.order_no, &p).unwrap_err();
    match err {
        StoreError::Constraint {
            kind, constraint, ..
        } => {
            assert_eq!(kind, ConstraintKind::Unique);
            assert_eq!(constraint, "payments_transaction_id_key");
        }
        other => panic!("expected a unique violation, got {other:?}"),
    }
    let stored = find_order(&mut conn, &second.order_no).unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::PendingPayment, "rolled back");
    assert_eq!(event_kinds(&mut conn, &second.order_no), ["created"]);
}
