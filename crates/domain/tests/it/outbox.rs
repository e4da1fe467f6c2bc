//! The outbox relay's claim/mark protocol.

use std::sync::mpsc;
use std::thread;

use domain::testing::TestDb;
use domain::{relay_batch, unpublished_count, PublishReport};

use crate::{load, order};

#[test]
fn only_confirmed_rows_are_marked_and_failures_are_counted() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 100, 100);
    let created: Vec<_> = (0..5).map(|_| order(&mut conn, &[("TEA", 1)])).collect();

    let mut seen = Vec::new();
    let batch = relay_batch::<()>(&mut conn, 3, |msgs| {
        seen = msgs.iter().map(|m| m.order_no.clone()).collect();
        assert!(msgs.iter().all(|m| m.attempts == 0));
        Ok(PublishReport {
            confirmed: vec![msgs[0].outbox_id, msgs[2].outbox_id],
            failed: vec![(msgs[1].outbox_id, "nacked".into())],
        })
    })
    .unwrap()
    .unwrap();
    assert_eq!((batch.claimed, batch.published, batch.failed), (3, 2, 1));
    // Oldest first, and the messages carry what the body needs.
    let expected: Vec<_> = created[..3].iter().map(|o| o.order_no.clone()).collect();
    assert_eq!(seen, expected);
    assert_eq!(unpublished_count(&mut conn).unwrap(), 3);

    // The failed row comes back first, with its attempt counted.
    let next = relay_batch::<()>(&mut conn, 10, |msgs| {
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].order_no, created[1].order_no);
        assert_eq!(msgs[0].attempts, 1);
        assert_eq!(msgs[0].deadline, created[1].deadline);
        Ok(PublishReport {
            confirmed: msgs.iter().map(|m| m.outbox_id).collect(),
            failed: vec![],
        })
    })
    .unwrap()
    .unwrap();
    assert_eq!(next.published, 3);
    assert_eq!(unpublished_count(&mut conn).unwrap(), 0);
    let empty = relay_batch::<()>(&mut conn, 10, |_| panic!("nothing to publish"))
        .unwrap()
        .unwrap();
    assert_eq!(empty.claimed, 0);
}

#[test]
fn a_publisher_error_marks_nothing() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 100, 100);
    for _ in 0..3 {
        let _ = order(&mut conn, &[("TEA", 1)]);
    }
    let result = relay_batch(&mut conn, 10, |_| Err("connection lost")).unwrap();
    assert_eq!(result, Err("connection lost"));
    assert_eq!(unpublished_count(&mut conn).unwrap(), 3);
}

#[test]
fn two_relays_never_claim_the_same_rows() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 100, 100);
    for _ in 0..6 {
        let _ = order(&mut conn, &[("TEA", 1)]);
    }
    // Relay A claims 4 rows and holds them until B has run.
    let (claimed_tx, claimed_rx) = mpsc::channel::<Vec<i64>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let mut conn_a = db.conn();
    let a = thread::spawn(move || {
        relay_batch::<()>(&mut conn_a, 4, |msgs| {
            let ids: Vec<i64> = msgs.iter().map(|m| m.outbox_id).collect();
            claimed_tx.send(ids.clone()).unwrap();
            go_rx.recv().unwrap();
            Ok(PublishReport {
                confirmed: ids,
                failed: vec![],
            })
        })
        .unwrap()
        .unwrap()
    });
    let a_ids = claimed_rx.recv().unwrap();
    let mut b_ids = Vec::new();
    let b = relay_batch::<()>(&mut db.conn(), 10, |msgs| {
        b_ids = msgs.iter().map(|m| m.outbox_id).collect();
        Ok(PublishReport {
            confirmed: b_ids.clone(),
            failed: vec![],
        })
    })
    .unwrap()
    .unwrap();
    go_tx.send(()).unwrap();
    let a = a.join().unwrap();
    assert_eq!((a.published, b.published), (4, 2));
    assert!(
        a_ids.iter().all(|id| !b_ids.contains(id)),
        "{a_ids:?} vs {b_ids:?}"
    );
    assert_eq!(unpublished_count(&mut conn).unwrap(), 0);
}
