use std::time::Duration;

use domain::testing::TestDb;
use domain::{
    create_order, find_order, order_events, order_items, pending_past_deadline, unpublished_count,
    OrderStatus, StoreError,
};

use crate::{assert_conserved, line, load, order, stock_of, WINDOW};

#[test]
fn create_order_reserves_stock_and_writes_order_items_outbox_and_event() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 350);
    load(&mut conn, "MUG", 3, 1999);

    let new = order(&mut conn, &[("TEA", 2), ("MUG", 1)]);
    assert_eq!(new.total.get(), 2 * 350 + 1999);
    assert_eq!(new.deadline - new.created_at, chrono::Duration::minutes(30));
    assert_eq!(
        (stock_of(&mut conn, "TEA"), stock_of(&mut conn, "MUG")),
        (8, 2)
    );

    let stored = find_order(&mut conn, &new.order_no).unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::PendingPayment);
    assert_eq!(stored.total, new.total);
    assert_eq!(stored.deadline, new.deadline);
    let items: Vec<(String, u32, i64)> = order_items(&mut conn, &new.order_no)
        .unwrap()
        .into_iter()
        .map(|i| (i.sku.to_string(), i.quantity.get(), i.unit_price.get()))
        .collect();
    assert_eq!(items, [("MUG".into(), 1, 1999), ("TEA".into(), 2, 350)]);
    assert_eq!(unpublished_count(&mut conn).unwrap(), 1);
    let events = order_events(&mut conn, &new.order_no).unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["created"]
    );
    assert_conserved(&mut conn);
}

#[test]
fn create_order_merges_lines_naming_the_same_sku() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let new = order(&mut conn, &[("TEA", 2), ("TEA", 3)]);
    let items = order_items(&mut conn, &new.order_no).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].quantity.get(), 5);
    assert_eq!(stock_of(&mut conn, "TEA"), 5);
    assert_eq!(new.total.get(), 500);
}

#[test]
fn create_order_for_more_than_the_stock_names_the_sku_and_writes_nothing() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "AAA", 10, 100);
    load(&mut conn, "ZZZ", 1, 100);
    // AAA (locked and decremented first) is fine; ZZZ fails: AAA must be untouched.
    let err = create_order(&mut conn, &[line("AAA", 4), line("ZZZ", 2)], WINDOW).unwrap_err();
    match &err {
        StoreError::InsufficientStock {
            sku,
            requested,
            available,
        } => assert_eq!((sku.as_str(), *requested, *available), ("ZZZ", 2, 1)),
        other => panic!("expected InsufficientStock, got {other:?}"),
    }
    assert!(err.to_string().contains("ZZZ"), "{err}");
    assert_eq!(
        (stock_of(&mut conn, "AAA"), stock_of(&mut conn, "ZZZ")),
        (10, 1)
    );
    assert_eq!(unpublished_count(&mut conn).unwrap(), 0);
    assert_eq!(domain::count_by_status(&mut conn).unwrap()[0].1, 0);
    assert_conserved(&mut conn);
}

#[test]
fn create_order_for_an_unknown_sku_names_it_and_writes_nothing() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let err = create_order(&mut conn, &[line("TEA", 1), line("GHOST", 1)], WINDOW).unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownSku(s) if s.as_str() == "GHOST"),
        "{err:?}"
    );
    assert!(err.to_string().contains("GHOST"));
    assert_eq!(stock_of(&mut conn, "TEA"), 10);
    assert_eq!(unpublished_count(&mut conn).unwrap(), 0);
}

#[test]
fn create_order_rejects_an_empty_order_and_an_absurd_window() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    assert!(matches!(
        create_order(&mut conn, &[], WINDOW),
        Err(StoreError::EmptyOrder)
    ));
    let year_and_more = Duration::from_hours(9600);
    assert!(matches!(
        create_order(&mut conn, &[line("TEA", 1)], year_and_more),
        Err(StoreError::InvalidWindow(_))
    ));
    assert_eq!(stock_of(&mut conn, "TEA"), 10);
}

#[test]
fn the_last_units_can_be_sold_and_then_nothing_more() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 3, 100);
    let _ = order(&mut conn, &[("TEA", 3)]);
    assert_eq!(stock_of(&mut conn, "TEA"), 0);
    let err = create_order(&mut conn, &[line("TEA", 1)], WINDOW).unwrap_err();
    assert!(matches!(
        err,
        StoreError::InsufficientStock { available: 0, .. }
    ));
    assert_conserved(&mut conn);
}

#[test]
fn order_numbers_are_unique_and_valid_for_wechat() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 1000, 100);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let no = order(&mut conn, &[("TEA", 1)]).order_no;
        assert!(domain::OrderNo::parse(no.as_str()).is_ok());
        assert!(seen.insert(no));
    }
}

#[test]
fn pending_past_deadline_lists_only_overdue_pending_orders_oldest_first() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let short = Duration::from_mins(1);
    let a = create_order(&mut conn, &[line("TEA", 1)], short).unwrap();
    let b = create_order(&mut conn, &[line("TEA", 1)], Duration::from_secs(30)).unwrap();
    let closed = create_order(&mut conn, &[line("TEA", 1)], short).unwrap();
    let _later = create_order(&mut conn, &[line("TEA", 1)], Duration::from_hours(1)).unwrap();
    let _ = domain::close_unpaid(&mut conn, &closed.order_no, "test", None).unwrap();

    let now = chrono::Utc::now();
    let in_two_minutes = now + chrono::Duration::minutes(2);
    let overdue: Vec<_> = pending_past_deadline(&mut conn, in_two_minutes, now, None, 10)
        .unwrap()
        .into_iter()
        .map(|o| o.order_no)
        .collect();
    assert_eq!(overdue, [b.order_no.clone(), a.order_no.clone()]);
    let limited = pending_past_deadline(&mut conn, in_two_minutes, now, None, 1).unwrap();
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].order_no, b.order_no);
    // The next page starts after the cursor of the last one seen.
    let next = pending_past_deadline(&mut conn, in_two_minutes, now, Some(limited[0].cursor()), 1)
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].order_no, a.order_no);
    assert!(
        pending_past_deadline(&mut conn, in_two_minutes, now, Some(next[0].cursor()), 1)
            .unwrap()
            .is_empty()
    );
    assert!(
        pending_past_deadline(&mut conn, chrono::Utc::now(), now, None, 10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_sweep_pages_leave_out_deferred_orders_and_anomalies() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let nos: Vec<_> = (0..4)
        .map(|_| {
            create_order(&mut conn, &[line("TEA", 1)], Duration::from_secs(1))
                .unwrap()
                .order_no
        })
        .collect();
    let now = chrono::Utc::now();
    let later = now + chrono::Duration::minutes(10);
    // Deferred: not before `later`.
    assert!(domain::defer_check(&mut conn, &nos[0], later).unwrap());
    // A human's.
    let _ =
        domain::record_anomaly(&mut conn, &nos[1], domain::Anomaly::AmountMismatch, "x").unwrap();
    let listed: Vec<_> = pending_past_deadline(&mut conn, later, now, None, 10)
        .unwrap()
        .into_iter()
        .map(|o| o.order_no)
        .collect();
    assert_eq!(listed, nos[2..]);
    // Once the deferral has passed, it is back, with its failure counted.
    let again = pending_past_deadline(&mut conn, later, later, None, 10).unwrap();
    assert_eq!(again[0].order_no, nos[0]);
    assert_eq!(again[0].check_failures, 1);
    assert_eq!(again.len(), 3, "the anomaly stays out");
}

#[test]
fn create_order_refuses_a_total_past_the_limit_and_writes_nothing() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "GOLD", 10, domain::Fen::MAX);
    load(&mut conn, "TEA", 10, 50);
    let err =
        domain::create_order(&mut conn, &[line("GOLD", 1), line("TEA", 1)], WINDOW).unwrap_err();
    assert!(matches!(err, StoreError::TotalTooLarge), "{err:?}");
    assert_eq!(
        (stock_of(&mut conn, "GOLD"), stock_of(&mut conn, "TEA")),
        (10, 10)
    );
    let one = domain::create_order(&mut conn, &[line("GOLD", 1)], WINDOW).unwrap();
    assert_eq!(one.total.get(), domain::Fen::MAX);
}

/// A SKU priced 0 (created before a price was required) cannot be sold: an
/// order of it could never be paid at WeChat Pay.
#[test]
fn a_sku_without_a_price_is_not_for_sale_and_nothing_is_reserved() {
    use diesel::RunQueryDsl;
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let _ = diesel::sql_query("INSERT INTO skus (code, stock, price_fen) VALUES ('FREE', 10, 0)")
        .execute(&mut conn)
        .unwrap();
    for lines in [vec![line("FREE", 1)], vec![line("TEA", 1), line("FREE", 2)]] {
        let err = create_order(&mut conn, &lines, WINDOW).unwrap_err();
        assert!(
            matches!(&err, StoreError::NotForSale(s) if s.as_str() == "FREE"),
            "{lines:?}: {err:?}"
        );
        assert!(err.to_string().contains("FREE"), "{err}");
    }
    assert_eq!(
        (stock_of(&mut conn, "TEA"), stock_of(&mut conn, "FREE")),
        (10, 10)
    );
    assert_eq!(unpublished_count(&mut conn).unwrap(), 0);
    assert_eq!(domain::count_by_status(&mut conn).unwrap()[0].1, 0);
}

/// The hand-written statements are prepared once per connection and then
/// only executed (why `prepared` exists): after two of each on one
/// connection, each is once in `pg_prepared_statements`.
#[test]
fn hot_statements_are_prepared_once_per_connection() {
    use diesel::sql_types::{BigInt, Text};
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    load(&mut conn, "MUG", 10, 100);
    for round in 0..2 {
        let one = order(&mut conn, &[("TEA", 1)]);
        let _ = order(&mut conn, &[("TEA", 1), ("MUG", 1)]);
        let paid = order(&mut conn, &[("MUG", 1)]);
        let tx = format!("tx-prepared-{round}");
        let _ = domain::mark_paid(
            &mut conn,
            &paid.order_no,
            &crate::payments::payment(&tx, 100),
        )
        .unwrap();
        let _ = domain::close_unpaid(&mut conn, &one.order_no, "test", None).unwrap();
    }
    for (what, text) in [
        ("create, several lines", "%unnest($1::text[], $2::int4[])%"),
        (
            "close",
            "%unnest($1::text[], $2::text[], $3::timestamptz[])%",
        ),
        ("pay", "%UPDATE orders SET status = 'paid'%"),
    ] {
        let n = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE $1",
        )
        .bind::<Text, _>(text)
        .get_result::<N>(&mut conn)
        .unwrap()
        .n;
        assert_eq!(n, 1, "{what}: prepared {n} times");
    }
}
