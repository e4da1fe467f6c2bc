//! Races: several connections doing the same or conflicting things at once.

use std::sync::{Arc, Barrier};
use std::thread;

use domain::testing::TestDb;
use domain::{
    close_unpaid, create_order, find_order, mark_paid, CloseOutcome, MarkPaidOutcome, OrderStatus,
    StoreError,
};

use crate::payments::payment;
use crate::{assert_conserved, line, load, order, stock_of, WINDOW};

/// Runs `n` threads, each with its own connection, released together.
pub(crate) fn race<T: Send + 'static>(
    db: &TestDb,
    n: usize,
    f: impl Fn(usize, &mut domain::PgConnection) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let mut conn = db.conn();
            let barrier = Arc::clone(&barrier);
            let f = Arc::clone(&f);
            thread::spawn(move || {
                barrier.wait();
                f(i, &mut conn)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn eight_threads_closing_one_order_give_its_stock_back_exactly_once() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    load(&mut conn, "MUG", 10, 100);
    let o = order(&mut conn, &[("TEA", 3), ("MUG", 1)]);
    let no = o.order_no.clone();
    let outcomes = race(&db, 8, move |_, c| {
        close_unpaid(c, &no, "race", None).unwrap()
    });
    let closed = outcomes
        .iter()
        .filter(|o| matches!(o, CloseOutcome::Closed { .. }))
        .count();
    assert_eq!(closed, 1, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, CloseOutcome::Closed { .. } | CloseOutcome::AlreadyClosed)));
    assert_eq!(
        (stock_of(&mut conn, "TEA"), stock_of(&mut conn, "MUG")),
        (10, 10)
    );
    assert_conserved(&mut conn);
}

#[test]
fn two_buyers_for_the_last_unit_make_exactly_one_order() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "LAST", 1, 100);
    let results = race(&db, 2, |_, c| create_order(c, &[line("LAST", 1)], WINDOW));
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(StoreError::InsufficientStock { available: 0, .. }))));
    assert_eq!(stock_of(&mut conn, "LAST"), 0);
    assert_conserved(&mut conn);
}

#[test]
fn eight_buyers_across_overlapping_skus_never_oversell_nor_deadlock() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "AAA", 20, 100);
    load(&mut conn, "BBB", 20, 100);
    // Half the buyers name the SKUs in one order, half in the other: without
    // a fixed locking order this deadlocks.
    let results = race(&db, 8, |i, c| {
        let mut ok = 0;
        for _ in 0..10 {
            let lines = if i % 2 == 0 {
                [line("AAA", 1), line("BBB", 1)]
            } else {
                [line("BBB", 1), line("AAA", 1)]
            };
            match create_order(c, &lines, WINDOW) {
                Ok(_) => ok += 1,
                Err(StoreError::InsufficientStock { .. }) => {}
                Err(e) => panic!("unexpected error: {e:?}"),
            }
        }
        ok
    });
    assert_eq!(
        results.iter().sum::<i32>(),
        20,
        "exactly the stock was sold"
    );
    assert_eq!(
        (stock_of(&mut conn, "AAA"), stock_of(&mut conn, "BBB")),
        (0, 0)
    );
    assert_conserved(&mut conn);
}

#[test]
fn close_racing_mark_paid_has_exactly_one_winner_per_order() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 100, 100);
    let orders: Vec<_> = (0..25)
        .map(|_| order(&mut conn, &[("TEA", 2)]).order_no)
        .collect();
    let shared = Arc::new(orders.clone());
    let outcomes = race(&db, 2, move |i, c| {
        shared
            .iter()
            .enumerate()
            .map(|(k, no)| {
                if i == 0 {
                    Ok(close_unpaid(c, no, "race", None).unwrap())
                } else {
                    Err(mark_paid(c, no, &payment(&format!("tx-{k}"), 200)).unwrap())
                }
            })
            .collect::<Vec<_>>()
    });
    let (closes, pays) = (&outcomes[0], &outcomes[1]);
    for (k, no) in orders.iter().enumerate() {
        let close = closes[k].as_ref().unwrap();
        let pay = pays[k].as_ref().unwrap_err();
        let status = find_order(&mut conn, no).unwrap().unwrap().status;
        match (close, pay) {
            // The close won: the payment is recorded for refund, order stays closed.
            (
                CloseOutcome::Closed { .. },
                MarkPaidOutcome::PaidAfterClose {
                    newly_recorded: true,
                },
            ) => {
                assert_eq!(status, OrderStatus::Closed);
            }
            // The payment won: the close backs off.
            (CloseOutcome::AlreadyPaid, MarkPaidOutcome::Paid) => {
                assert_eq!(status, OrderStatus::Paid);
            }
            other => panic!("order {no}: impossible pair {other:?}"),
        }
    }
    assert_conserved(&mut conn);
}
