//! An operator's decisions (`domain::decisions`): each in one transaction,
//! refused when the case is not open, and exactly one of two racing
//! decisions wins.

use std::sync::Barrier;

use domain::testing::TestDb;
use domain::{
    accept_payment, find_order, order_events, payments_of, record_anomaly, refund_payment,
    refunds_of, Anomaly, AnomalyOutcome, Decision, OrderNo, OrderStatus, StoreError,
};

use crate::payments::payment;
use crate::{assert_conserved, load, order, stock_of};

fn alice() -> Decision {
    Decision::new("alice", "checked the merchant platform").unwrap()
}

fn case(conn: &mut domain::PgConnection) -> OrderNo {
    let o = order(conn, &[("TEA", 2)]);
    assert_eq!(
        record_anomaly(conn, &o.order_no, Anomaly::AmountMismatch, "1 fen, not 200").unwrap(),
        AnomalyOutcome::Recorded
    );
    o.order_no
}

fn refused(r: Result<impl std::fmt::Debug, StoreError>) -> String {
    match r {
        Err(StoreError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_decision_needs_a_name_and_a_reason_without_control_characters() {
    assert!(Decision::new("alice", "why").is_ok());
    assert_eq!(Decision::new(" alice ", " why ").unwrap().by(), "alice");
    for (by, reason) in [
        ("", "why"),
        ("  ", "why"),
        ("alice", ""),
        ("alice", "   "),
        ("alice", "two\nlines"),
        ("al\tice", "why"),
    ] {
        assert!(Decision::new(by, reason).is_err(), "{by:?} {reason:?}");
    }
    assert!(Decision::new(&"x".repeat(65), "why").is_err());
    assert!(Decision::new("x", &"y".repeat(1001)).is_err());
}

#[test]
fn accept_pays_the_order_with_the_reported_amount_and_names_the_operator() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let no = case(&mut conn);
    accept_payment(&mut conn, &no, &payment("T-ACCEPT-1", 1), &alice()).unwrap();
    let o = find_order(&mut conn, &no).unwrap().unwrap();
    assert_eq!(o.status, OrderStatus::Paid);
    assert_eq!(o.anomaly, None);
    assert_eq!(payments_of(&mut conn, &no).unwrap()[0].amount.get(), 1);
    assert_eq!(stock_of(&mut conn, "TEA"), 8);
    let events = order_events(&mut conn, &no).unwrap();
    let d = events.last().unwrap();
    assert_eq!(d.kind, "decision");
    assert_eq!(d.actor.as_deref(), Some("alice"));
    assert!(
        d.detail.contains("checked the merchant platform"),
        "{}",
        d.detail
    );
    assert!(events
        .iter()
        .all(|e| e.kind == "decision" || e.actor.is_none()));
    // Again: refused, nothing more.
    let why = refused(accept_payment(
        &mut conn,
        &no,
        &payment("T-ACCEPT-2", 1),
        &alice(),
    ));
    assert!(why.contains("already paid"), "{why}");
    assert_eq!(payments_of(&mut conn, &no).unwrap().len(), 1);
    assert_eq!(order_events(&mut conn, &no).unwrap().len(), events.len());
    assert_conserved(&mut conn);
}

#[test]
fn a_transaction_recorded_for_another_order_is_refused() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let first = case(&mut conn);
    accept_payment(&mut conn, &first, &payment("T-SHARED", 200), &alice()).unwrap();
    let second = case(&mut conn);
    for why in [
        refused(accept_payment(
            &mut conn,
            &second,
            &payment("T-SHARED", 200),
            &alice(),
        )),
        refused(refund_payment(
            &mut conn,
            &second,
            &payment("T-SHARED", 200),
            &alice(),
        )),
    ] {
        assert!(why.contains(first.as_str()), "{why}");
    }
    let o = find_order(&mut conn, &second).unwrap().unwrap();
    assert_eq!(o.status, OrderStatus::PendingPayment);
    assert_eq!(o.anomaly, Some(Anomaly::AmountMismatch));
    assert_conserved(&mut conn);
}

#[test]
fn refund_closes_gives_stock_back_and_queues_one_refund_of_what_was_paid() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let no = case(&mut conn);
    let q = refund_payment(&mut conn, &no, &payment("T-REFUND-1", 7), &alice()).unwrap();
    assert_eq!((q.lines, q.units), (1, 2));
    assert_eq!(stock_of(&mut conn, "TEA"), 10);
    let refunds = refunds_of(&mut conn, &no).unwrap();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].out_refund_no, q.out_refund_no);
    assert_eq!(refunds[0].amount.get(), 7);
    let kinds: Vec<_> = order_events(&mut conn, &no)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        ["created", "anomaly", "closed", "refund", "decision"]
    );
    refused(refund_payment(
        &mut conn,
        &no,
        &payment("T-REFUND-1", 7),
        &alice(),
    ));
    assert_eq!(stock_of(&mut conn, "TEA"), 10, "stock given back once");
    // Nothing to refund: refused before anything is read.
    let zero = case(&mut conn);
    refused(refund_payment(
        &mut conn,
        &zero,
        &payment("T-REFUND-0", 0),
        &alice(),
    ));
    assert_conserved(&mut conn);
}

/// Runs `decide(i, conn)` for operators 0 and 1 at once (each on its own
/// connection, released together): how many were not refused.
fn race(
    db: &TestDb,
    decide: impl Fn(usize, &mut domain::PgConnection) -> Result<(), StoreError> + Sync,
) -> usize {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let (barrier, decide) = (&barrier, &decide);
                s.spawn(move || {
                    let mut conn = domain::connect(db.url()).unwrap();
                    barrier.wait();
                    match decide(i, &mut conn) {
                        Ok(()) => true,
                        Err(StoreError::Refused(_)) => false,
                        Err(e) => panic!("{e}"),
                    }
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|won| *won)
            .count()
    })
}

fn decision_events(conn: &mut domain::PgConnection, no: &OrderNo) -> usize {
    order_events(conn, no)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "decision")
        .count()
}

#[test]
fn of_two_decisions_racing_on_one_order_exactly_one_wins() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 100, 100);
    for round in 0..10 {
        let no = case(&mut conn);
        let pay = payment(&format!("T-RACE-{round}"), 200);
        let wins = race(&db, |i, conn| {
            let who = Decision::new(&format!("op{i}"), "race").unwrap();
            if i == 0 {
                accept_payment(conn, &no, &pay, &who)
            } else {
                refund_payment(conn, &no, &pay, &who).map(drop)
            }
        });
        assert_eq!(wins, 1);
        assert_eq!(payments_of(&mut conn, &no).unwrap().len(), 1);
        assert_eq!(decision_events(&mut conn, &no), 1);
    }
    assert_conserved(&mut conn);
}

#[test]
fn of_two_operators_asking_again_for_one_refund_exactly_one_wins() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 100, 100);
    for round in 0..5 {
        let no = case(&mut conn);
        let pay = payment(&format!("T-RR-{round}"), 200);
        let q = refund_payment(&mut conn, &no, &pay, &alice()).unwrap();
        domain::park_refund(&mut conn, &q.out_refund_no, "NOT_ENOUGH: balance too low").unwrap();
        let wins = race(&db, |i, conn| {
            let who = Decision::new(&format!("op{i}"), "topped up").unwrap();
            domain::reopen_refund(conn, &q.out_refund_no, &who)
        });
        assert_eq!(wins, 1);
        let r = refunds_of(&mut conn, &no).unwrap().remove(0);
        assert_eq!(r.needs_human, None);
        assert_eq!(
            decision_events(&mut conn, &no),
            2,
            "the refund decision and one retry-refund"
        );
    }
}
