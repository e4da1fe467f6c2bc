//! Closing many orders in one statement: each pending order closed once,
//! stock back exactly once, whatever the batch holds.

use std::sync::Arc;

use chrono::Utc;
use domain::close_batch::{close_unpaid_batch, CloseBatcher, CloseRequest};
use domain::testing::TestDb;
use domain::{find_order, CloseOutcome, OrderStatus};

use crate::{assert_conserved, load, order, stock_of};

fn request(no: &domain::OrderNo, reason: &str) -> CloseRequest {
    CloseRequest {
        order_no: no.clone(),
        reason: reason.to_owned(),
        recheck_at: None,
    }
}

fn closed_events(conn: &mut domain::PgConnection, no: &domain::OrderNo) -> usize {
    domain::order_events(conn, no)
        .unwrap()
        .iter()
        .filter(|e| e.kind == "closed")
        .count()
}

#[test]
fn a_batch_closes_each_pending_order_once_and_leaves_the_others() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 100, 50);
    load(&mut conn, "CUP", 100, 300);
    let singles: Vec<_> = (0..3)
        .map(|_| order(&mut conn, &[("TEA", 2)]).order_no)
        .collect();
    let two_lines = order(&mut conn, &[("TEA", 1), ("CUP", 4)]).order_no;
    let closed_before = order(&mut conn, &[("TEA", 5)]).order_no;
    let _ = domain::close_unpaid(&mut conn, &closed_before, "earlier", None).unwrap();
    assert_eq!(stock_of(&mut conn, "TEA"), 100 - 7);
    assert_eq!(stock_of(&mut conn, "CUP"), 96);

    let recheck_at = Utc::now() + chrono::Duration::minutes(10);
    let mut requests: Vec<_> = singles
        .iter()
        .map(|no| request(no, "ORDER_NOT_EXIST"))
        .collect();
    requests[0].recheck_at = Some(recheck_at);
    requests.push(request(&two_lines, "CLOSED"));
    requests.push(request(&closed_before, "again"));
    let closed = close_unpaid_batch(&mut conn, &requests).unwrap();

    assert_eq!(closed.len(), 4, "{closed:?}");
    assert_eq!(
        closed[&singles[1]],
        CloseOutcome::Closed { lines: 1, units: 2 }
    );
    assert_eq!(
        closed[&two_lines],
        CloseOutcome::Closed { lines: 2, units: 5 }
    );
    assert!(!closed.contains_key(&closed_before));
    // Every unit back once, the earlier close untouched.
    assert_eq!(stock_of(&mut conn, "TEA"), 100);
    assert_eq!(stock_of(&mut conn, "CUP"), 100);
    for no in singles.iter().chain([&two_lines, &closed_before]) {
        assert_eq!(closed_events(&mut conn, no), 1, "{no}");
        let o = find_order(&mut conn, no).unwrap().unwrap();
        assert_eq!(o.status, OrderStatus::Closed);
    }
    let first = find_order(&mut conn, &singles[0]).unwrap().unwrap();
    assert_eq!(first.close_reason.as_deref(), Some("ORDER_NOT_EXIST"));
    assert!(first.recheck_at.is_some());
    assert!(find_order(&mut conn, &singles[1])
        .unwrap()
        .unwrap()
        .recheck_at
        .is_none());
    assert_eq!(
        find_order(&mut conn, &closed_before)
            .unwrap()
            .unwrap()
            .close_reason
            .as_deref(),
        Some("earlier")
    );
    assert_conserved(&mut conn);
}

#[test]
fn the_batcher_answers_like_close_unpaid_for_repeats_paid_and_unknown_orders() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 100, 50);
    let a = order(&mut conn, &[("TEA", 2)]).order_no;
    let b = order(&mut conn, &[("TEA", 3)]).order_no;
    let paid = order(&mut conn, &[("TEA", 2)]).order_no;
    let payment = domain::PaymentRecord {
        transaction_id: domain::TransactionId::parse("4200000000000000000000000001").unwrap(),
        amount: domain::Fen::new(100).unwrap(),
        success_time: Utc::now(),
    };
    let _ = domain::mark_paid(&mut conn, &paid, &payment).unwrap();
    let unknown = domain::OrderNo::parse("nosuchorder0001").unwrap();
    let batcher = CloseBatcher::new(db.pool(2), 64);
    let results = batcher.close_all(vec![
        request(&a, "x"),
        request(&b, "x"),
        request(&a, "x"),
        request(&paid, "x"),
        request(&unknown, "x"),
    ]);
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results[0], CloseOutcome::Closed { lines: 1, units: 2 });
    assert_eq!(results[1], CloseOutcome::Closed { lines: 1, units: 3 });
    assert_eq!(
        results[2],
        CloseOutcome::AlreadyClosed,
        "a repeat in the batch"
    );
    assert_eq!(results[3], CloseOutcome::AlreadyPaid);
    assert_eq!(results[4], CloseOutcome::NotFound);
    assert_eq!(stock_of(&mut conn, "TEA"), 100 - 2);
    assert_eq!(closed_events(&mut conn, &a), 1);
    assert_conserved(&mut conn);
}

#[test]
fn a_batch_that_fails_is_closed_one_by_one_and_only_the_bad_close_fails() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 100, 50);
    let good: Vec<_> = (0..3)
        .map(|_| order(&mut conn, &[("TEA", 1)]).order_no)
        .collect();
    let bad = order(&mut conn, &[("TEA", 1)]).order_no;
    // PostgreSQL refuses a NUL byte in text: the whole statement fails.
    let mut requests: Vec<_> = good.iter().map(|no| request(no, "fine")).collect();
    requests.push(request(&bad, "not\0text"));
    assert!(close_unpaid_batch(&mut conn, &requests).is_err());
    assert_eq!(
        stock_of(&mut conn, "TEA"),
        96,
        "the failed statement changed nothing"
    );

    let batcher = CloseBatcher::new(db.pool(2), 64);
    let results = batcher.close_all(requests);
    for r in &results[..3] {
        assert_eq!(
            r.as_ref().unwrap(),
            &CloseOutcome::Closed { lines: 1, units: 1 }
        );
    }
    assert!(results[3].is_err());
    assert_eq!(stock_of(&mut conn, "TEA"), 99);
    let bad_order = find_order(&mut conn, &bad).unwrap().unwrap();
    assert_eq!(bad_order.status, OrderStatus::PendingPayment);
    assert_conserved(&mut conn);
}

#[test]
fn threads_closing_the_same_orders_through_the_batcher_close_each_exactly_once() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 1000, 50);
    load(&mut conn, "CUP", 1000, 300);
    let orders: Arc<Vec<_>> = Arc::new(
        (0..40)
            .map(|i| {
                let lines: &[(&str, u32)] = if i % 4 == 0 {
                    &[("TEA", 1), ("CUP", 2)]
                } else {
                    &[("TEA", 3)]
                };
                order(&mut conn, lines).order_no
            })
            .collect(),
    );
    let batcher = Arc::new(CloseBatcher::new(db.pool(4), 16));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (orders, batcher) = (Arc::clone(&orders), Arc::clone(&batcher));
            std::thread::spawn(move || {
                // Each thread walks the orders from a different place.
                (0..orders.len())
                    .map(|i| {
                        let no = &orders[(i + t * 5) % orders.len()];
                        let out = batcher.close(no, "ORDER_NOT_EXIST", None).unwrap();
                        (no.clone(), out)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outcomes: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(outcomes.len(), 8 * 40);
    for no in orders.iter() {
        let closed = outcomes
            .iter()
            .filter(|(n, o)| n == no && matches!(o, CloseOutcome::Closed { .. }))
            .count();
        assert_eq!(closed, 1, "order {no} closed {closed} times");
        assert!(outcomes
            .iter()
            .filter(|(n, _)| n == no)
            .all(|(_, o)| matches!(o, CloseOutcome::Closed { .. } | CloseOutcome::AlreadyClosed)));
        assert_eq!(closed_events(&mut conn, no), 1);
    }
    assert_eq!(stock_of(&mut conn, "TEA"), 1000);
    assert_eq!(stock_of(&mut conn, "CUP"), 1000);
    assert_conserved(&mut conn);
    let (statements, closes) = batcher.batches();
    assert_eq!(closes, 8 * 40);
    eprintln!("{closes} closes in {statements} statements");
    assert!(
        statements < closes,
        "eight threads never shared a statement"
    );
}
