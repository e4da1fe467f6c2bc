//! Stock: setting and reading what is available for sale, and the
//! conservation check that every test and the demo run.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::error::StoreError;
use crate::models::{Sku, SkuRow};
use crate::schema::{skus, stock_adjustments};
use crate::values::{Fen, SkuCode, StockLevel};

/// What [`set_stock`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct StockChange {
    /// The SKU did not exist and was created.
    pub created: bool,
    /// Units available before (0 for a new SKU).
    pub previous: u32,
    /// Units available now.
    pub current: u32,
}

/// Sets the units of `code` available for sale to `level`, creating the SKU
/// if it is new; `price` replaces the price when given. A new SKU needs a
/// price and no price may be 0 ([`StoreError::PriceRequired`]): an order of
/// a free SKU could never be paid at WeChat Pay. Units held by pending or
/// paid orders are not part of `level`.
///
/// The change is recorded in `stock_adjustments` (so conservation can be
/// checked later). Repeat with the same values: nothing changes, no
/// adjustment is recorded. A refusal changes nothing.
pub fn set_stock(
    conn: &mut PgConnection,
    code: &SkuCode,
    level: StockLevel,
    price: Option<Fen>,
) -> Result<StockChange, StoreError> {
    if price.is_some_and(|p| p.get() < 1) {
        return Err(StoreError::PriceRequired(code.clone()));
    }
    conn.transaction(|conn| {
        let created = match price {
            Some(p) => {
                diesel::insert_into(skus::table)
                    .values((
                        skus::code.eq(code.as_str()),
                        skus::stock.eq(0),
                        skus::price_fen.eq(p.get()),
                    ))
                    .on_conflict(skus::code)
                    .do_nothing()
                    .execute(conn)?
                    == 1
            }
            None => false,
        };
        // Lock the row so the delta we record is the delta we make, even
        // with orders being created concurrently.
        let Some((id, previous)) = skus::table
            .filter(skus::code.eq(code.as_str()))
            .select((skus::id, skus::stock))
            .for_update()
            .first::<(i64, i32)>(conn)
            .optional()?
        else {
            // New, and no price given.
            return Err(StoreError::PriceRequired(code.clone()));
        };
        let current = level.get() as i32;
        let now = chrono::Utc::now();
        match price {
            Some(p) => diesel::update(skus::table.find(id))
                .set((
                    skus::stock.eq(current),
                    skus::price_fen.eq(p.get()),
                    skus::updated_at.eq(now),
                ))
                .execute(conn)?,
            None => diesel::update(skus::table.find(id))
                .set((skus::stock.eq(current), skus::updated_at.eq(now)))
                .execute(conn)?,
        };
        let delta = i64::from(current) - i64::from(previous);
        if delta != 0 {
            diesel::insert_into(stock_adjustments::table)
                .values((
                    stock_adjustments::sku_id.eq(id),
                    stock_adjustments::delta.eq(delta),
                ))
                .execute(conn)?;
        }
        Ok(StockChange {
            created,
            previous: previous as u32,
            current: level.get(),
        })
    })
}

/// The SKU with this code, or `None`. Read-only.
pub fn get_sku(conn: &mut PgConnection, code: &SkuCode) -> Result<Option<Sku>, StoreError> {
    skus::table
        .filter(skus::code.eq(code.as_str()))
        .select(SkuRow::as_select())
        .first(conn)
        .optional()?
        .map(Sku::try_from)
        .transpose()
}

/// Every SKU, by code. Read-only.
pub fn list_skus(conn: &mut PgConnection) -> Result<Vec<Sku>, StoreError> {
    skus::table
        .order(skus::code.asc())
        .select(SkuRow::as_select())
        .load(conn)?
        .into_iter()
        .map(Sku::try_from)
        .collect()
}

/// One SKU's stock balance: invariant 3 (ARCHITECTURE.md) says
/// `stock + held == loaded`.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct StockBalance {
    #[diesel(sql_type = Text)]
    pub code: String,
    /// Units available for sale now.
    #[diesel(sql_type = BigInt)]
    pub stock: i64,
    /// Units held by pending and paid orders.
    #[diesel(sql_type = BigInt)]
    pub held: i64,
    /// Units ever loaded by operators (sum of stock adjustments).
    #[diesel(sql_type = BigInt)]
    pub loaded: i64,
}

impl StockBalance {
    #[must_use]
    pub fn is_conserved(&self) -> bool {
        self.stock + self.held == self.loaded
    }
}

/// The stock balance of every SKU, by code, read in one statement (one
/// snapshot, so it is consistent even while orders move). Read-only.
pub fn stock_balances(conn: &mut PgConnection) -> Result<Vec<StockBalance>, StoreError> {
    Ok(diesel::sql_query(
        "SELECT s.code,
                s.stock::bigint AS stock,
                COALESCE((SELECT sum(oi.quantity)
                            FROM order_items oi JOIN orders o ON o.id = oi.order_id
                           WHERE oi.sku_id = s.id
                             AND o.status IN ('pending_payment', 'paid')), 0)::bigint AS held,
                COALESCE((SELECT sum(a.delta) FROM stock_adjustments a
                           WHERE a.sku_id = s.id), 0)::bigint AS loaded
           FROM skus s
          ORDER BY s.code",
    )
    .load(conn)?)
}
