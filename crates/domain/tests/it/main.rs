//! Integration tests of the store against the real PostgreSQL: one fresh
//! database per test (see `domain::testing`).

mod close_batch;
mod concurrency;
mod constraints;
mod decisions;
mod idempotency;
mod migrations;
mod orders;
mod outbox;
mod payments;
mod pool;
mod refunds;
mod stock;

use std::time::Duration;

use domain::{
    create_order, get_sku, set_stock, NewOrder, OrderLine, PgConnection, Quantity, SkuCode,
    StockLevel,
};

pub(crate) const WINDOW: Duration = Duration::from_mins(30);

pub(crate) fn sku(code: &str) -> SkuCode {
    SkuCode::parse(code).unwrap()
}

pub(crate) fn line(code: &str, qty: u32) -> OrderLine {
    OrderLine {
        sku: sku(code),
        quantity: Quantity::new(qty).unwrap(),
    }
}

/// Loads `code` with `stock` units at `price` fen.
pub(crate) fn load(conn: &mut PgConnection, code: &str, stock: u32, price: i64) {
    let _ = set_stock(
        conn,
        &sku(code),
        StockLevel::new(stock).unwrap(),
        Some(domain::Fen::new(price).unwrap()),
    )
    .unwrap();
}

pub(crate) fn stock_of(conn: &mut PgConnection, code: &str) -> u32 {
    get_sku(conn, &sku(code))
        .unwrap()
        .expect("sku exists")
        .stock
}

pub(crate) fn order(conn: &mut PgConnection, lines: &[(&str, u32)]) -> NewOrder {
    let lines: Vec<OrderLine> = lines.iter().map(|(c, q)| line(c, *q)).collect();
    create_order(conn, &lines, WINDOW).unwrap()
}

/// Invariant 3: for every SKU, stock + held by pending and paid orders ==
/// everything ever loaded.
pub(crate) fn assert_conserved(conn: &mut PgConnection) {
    domain::testing::assert_stock_conserved(conn);
}
