//! `Idempotency-Key`: a retried request never reserves stock twice.

use domain::testing::TestDb;
use domain::{
    create_order_idempotent, record_prepay, IdempotencyKey, OrderNo, OrderStatus, StoreError,
};

use crate::concurrency::race;
use crate::{assert_conserved, line, load, stock_of, WINDOW};

fn count(conn: &mut domain::PgConnection, sql_table: &str) -> i64 {
    use diesel::sql_types::BigInt;
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query(format!("SELECT count(*) AS n FROM {sql_table}"))
        .get_result::<N>(conn)
        .unwrap()
        .n
}

#[test]
fn the_same_key_and_request_give_the_same_order_once() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 50);
    let key = Some(IdempotencyKey("order-1"));
    let first = create_order_idempotent(&mut conn, &[line("TEA", 2)], WINDOW, key).unwrap();
    assert!(!first.replayed);
    assert_eq!(first.status, OrderStatus::PendingPayment);
    // The same request written differently (split lines) is the same request.
    let again =
        create_order_idempotent(&mut conn, &[line("TEA", 1), line("TEA", 1)], WINDOW, key).unwrap();
    assert!(again.replayed);
    assert_eq!(again.order, first.order);
    assert_eq!(stock_of(&mut conn, "TEA"), 8);
    assert_eq!(count(&mut conn, "orders"), 1);
    assert_eq!(count(&mut conn, "outbox"), 1);
    assert_conserved(&mut conn);
}

#[test]
fn the_same_key_with_another_request_is_refused_and_writes_nothing() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 50);
    let key = Some(IdempotencyKey("k"));
    create_order_idempotent(&mut conn, &[line("TEA", 2)], WINDOW, key).unwrap();
    for (lines, window) in [
        (vec![line("TEA", 3)], WINDOW),
        (vec![line("TEA", 2)], WINDOW * 2),
    ] {
        let err = create_order_idempotent(&mut conn, &lines, window, key).unwrap_err();
        assert!(
            matches!(err, StoreError::IdempotencyKeyReused(ref k) if k == "k"),
            "{err:?}"
        );
    }
    assert_eq!(stock_of(&mut conn, "TEA"), 8);
    assert_eq!(count(&mut conn, "orders"), 1);
}

#[test]
fn a_refused_request_does_not_keep_its_key() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 1, 50);
    let key = Some(IdempotencyKey("k"));
    let err = create_order_idempotent(&mut conn, &[line("TEA", 2)], WINDOW, key).unwrap_err();
    assert!(
        matches!(err, StoreError::InsufficientStock { .. }),
        "{err:?}"
    );
    assert_eq!(count(&mut conn, "idempotency_keys"), 0);
    // Stock arrives; the retry with the same key is judged afresh.
    load(&mut conn, "TEA", 5, 50);
    let created = create_order_idempotent(&mut conn, &[line("TEA", 2)], WINDOW, key).unwrap();
    assert!(!created.replayed);
    assert_eq!(stock_of(&mut conn, "TEA"), 3);
}

#[test]
fn eight_concurrent_retries_of_one_key_reserve_once() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 100, 50);
    let results = race(&db, 8, |_, conn| {
        create_order_idempotent(
            conn,
            &[line("TEA", 3)],
            WINDOW,
            Some(IdempotencyKey("retry-storm")),
        )
        .unwrap()
    });
    let fresh = results.iter().filter(|r| !r.replayed).count();
    assert_eq!(fresh, 1, "{results:?}");
    assert!(results.iter().all(|r| r.order == results[0].order));
    assert_eq!(stock_of(&mut conn, "TEA"), 97);
    assert_eq!(count(&mut conn, "orders"), 1);
    assert_eq!(count(&mut conn, "outbox"), 1);
    assert_conserved(&mut conn);
}

#[test]
fn a_prepay_is_recorded_once() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 50);
    let o = create_order_idempotent(&mut conn, &[line("TEA", 1)], WINDOW, None)
        .unwrap()
        .order;
    assert_eq!(
        record_prepay(&mut conn, &o.order_no, "native").unwrap(),
        Some(true)
    );
    assert_eq!(
        record_prepay(&mut conn, &o.order_no, "native").unwrap(),
        Some(false)
    );
    let unknown = OrderNo::parse("OT20260101000000000000").unwrap();
    assert_eq!(record_prepay(&mut conn, &unknown, "native").unwrap(), None);
    let events = domain::order_events(&mut conn, &o.order_no).unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "prepay").count(), 1);
}
