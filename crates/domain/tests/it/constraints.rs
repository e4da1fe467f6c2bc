//! The database defends the data even against code that bypasses the
//! repository; violations come back as typed errors, never panics.

use diesel::RunQueryDsl;
use domain::testing::TestDb;
use domain::{close_unpaid, mark_paid, stock_balances, ConstraintKind, StoreError};

use crate::payments::payment;
use crate::{assert_conserved, load, order};

fn raw(conn: &mut domain::PgConnection, sql: &str) -> Result<usize, StoreError> {
    diesel::sql_query(sql)
        .execute(conn)
        .map_err(StoreError::from)
}

fn assert_violates(result: Result<usize, StoreError>, kind: ConstraintKind, name: &str) {
    match result {
        Err(StoreError::Constraint {
            kind: k,
            constraint,
            ..
        }) => assert_eq!((k, constraint.as_str()), (kind, name)),
        other => panic!("expected {kind:?} violation of {name}, got {other:?}"),
    }
}

#[test]
fn stock_can_never_go_negative() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 1, 100);
    assert_violates(
        raw(&mut conn, "UPDATE skus SET stock = stock - 2"),
        ConstraintKind::Check,
        "skus_stock_check",
    );
}

#[test]
fn statuses_quantities_and_order_numbers_are_checked() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let _ = order(&mut conn, &[("TEA", 1)]);
    assert_violates(
        raw(&mut conn, "UPDATE orders SET status = 'cancelled'"),
        ConstraintKind::Check,
        "orders_status_check",
    );
    assert_violates(
        raw(&mut conn, "UPDATE order_items SET quantity = 0"),
        ConstraintKind::Check,
        "order_items_quantity_check",
    );
    assert_violates(
        raw(
            &mut conn,
            "INSERT INTO orders (order_no, total_fen, deadline) VALUES ('bad no!', 0, now() + interval '1 hour')",
        ),
        ConstraintKind::Check,
        "orders_order_no_check",
    );
    assert_violates(
        raw(
            &mut conn,
            "INSERT INTO order_items (order_id, sku_id, quantity, unit_price_fen) VALUES (999999, 1, 1, 0)",
        ),
        ConstraintKind::ForeignKey,
        "order_items_order_id_fkey",
    );
}

#[test]
fn order_numbers_are_unique() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let o = order(&mut conn, &[("TEA", 1)]);
    let sql = format!(
        "INSERT INTO orders (order_no, total_fen, deadline) VALUES ('{}', 0, now() + interval '1 hour')",
        o.order_no
    );
    assert_violates(
        raw(&mut conn, &sql),
        ConstraintKind::Unique,
        "orders_order_no_key",
    );
}

#[test]
fn the_audit_trail_is_append_only() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let _ = order(&mut conn, &[("TEA", 1)]);
    let update = raw(&mut conn, "UPDATE order_events SET detail = 'rewritten'").unwrap_err();
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = raw(&mut conn, "DELETE FROM order_events").unwrap_err();
    assert!(delete.to_string().contains("append-only"), "{delete}");
}

#[test]
fn conservation_holds_through_a_mixed_history() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "AAA", 50, 100);
    load(&mut conn, "BBB", 30, 250);
    let mut orders = Vec::new();
    for i in 0..30u32 {
        let lines: &[(&str, u32)] = if i % 3 == 0 {
            &[("AAA", 1), ("BBB", 1)]
        } else {
            &[("AAA", 1)]
        };
        orders.push(order(&mut conn, lines).order_no);
    }
    for (i, no) in orders.iter().enumerate() {
        match i % 4 {
            0 => {
                let _ = close_unpaid(&mut conn, no, "unpaid", None).unwrap();
            }
            1 => {
                let _ = mark_paid(&mut conn, no, &payment(&format!("tx-{i}"), 100)).unwrap();
            }
            2 => {
                // Closed, then a late payment, then a duplicate close.
                let _ = close_unpaid(&mut conn, no, "unpaid", None).unwrap();
                let _ = mark_paid(&mut conn, no, &payment(&format!("tx-{i}"), 100)).unwrap();
                let _ = close_unpaid(&mut conn, no, "again", None).unwrap();
            }
            _ => {} // still pending
        }
        assert_conserved(&mut conn);
    }
    load(&mut conn, "AAA", 100, 100); // an operator restocks
    assert_conserved(&mut conn);
    let aaa = &stock_balances(&mut conn).unwrap()[0];
    assert_eq!(aaa.stock, 100);
}
