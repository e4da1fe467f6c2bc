//! Orders: creation (stock reserved and the delay message queued in the
//! outbox, one transaction), and the two ways out of `pending_payment`:
//! closed unpaid (stock given back) or paid.
//!
//! Every state change is an `UPDATE ... WHERE status = 'pending_payment'`
//! that must touch exactly one row: whoever changes the row first wins, every
//! later or concurrent attempt sees zero rows and reports what the order has
//! become. That is what makes the worker's retries and duplicates harmless
//! (ARCHITECTURE.md, invariant 1).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use diesel::prelude::*;

use diesel::pg::Pg;
use diesel::query_builder::AstPass;
use diesel::result::QueryResult;

use crate::error::StoreError;
use crate::models::{
    corrupt, EventRow, NewEventRow, NewPaymentRow, Order, OrderEvent, OrderItem, OrderRow, Payment,
    PaymentRow,
};
use crate::order_no::OrderNo;
use crate::prepared::{unknown_placeholder, Prepared, Statement};
use crate::schema::{idempotency_keys, order_events, order_items, orders, payments, skus};
use crate::values::{Fen, OrderStatus, Quantity, SkuCode, TransactionId};

/// The longest payment window an order may have (366 days).
pub const MAX_PAYMENT_WINDOW: Duration = Duration::from_hours(8784);

/// One line of a new order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub sku: SkuCode,
    pub quantity: Quantity,
}

/// An order just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub id: i64,
    pub order_no: OrderNo,
    pub total: Fen,
    pub created_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
}

/// An `Idempotency-Key` a shop sent with a request to create an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyKey<'a>(pub &'a str);

/// What [`create_order_idempotent`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedOrder {
    pub order: NewOrder,
    /// The order's status now: `pending_payment` when just created; whatever
    /// it has become when the key had been used before.
    pub status: OrderStatus,
    /// True when the key had been used before with the same request: this is
    /// that order, and nothing was written.
    pub replayed: bool,
}

/// Creates an order for `lines`, payable within `payment_window`, in one
/// transaction: for every SKU the stock is checked and decremented, then the
/// order, its items, an outbox row (the delay message to publish) and a
/// `created` event are inserted. Lines naming the same SKU are merged.
///
/// Fails with [`StoreError::EmptyOrder`], [`StoreError::UnknownSku`] or
/// [`StoreError::InsufficientStock`] (naming the SKU) and then writes
/// nothing. Concurrent buyers of the last unit: exactly one succeeds, the
/// others get `InsufficientStock`. Every call creates a new order.
pub fn create_order(
    conn: &mut PgConnection,
    lines: &[OrderLine],
    payment_window: Duration,
) -> Result<NewOrder, StoreError> {
    create_order_idempotent(conn, lines, payment_window, None).map(|c| c.order)
}

/// [`create_order`], honouring an idempotency key when one is given: the
/// key is stored in the same transaction as the order, so the first request
/// with a key creates the order and every later one with the same key and
/// the same request (lines merged and sorted, same window) gets that order
/// back with `replayed`, reserving nothing. The same key with another
/// request fails with [`StoreError::IdempotencyKeyReused`] and writes
/// nothing. Concurrent requests with one key: the database's unique index
/// makes the others wait for the first to commit, then they read its order;
/// if the first was refused (no stock), its key was rolled back with it and
/// the next is judged afresh.
pub fn create_order_idempotent(
    conn: &mut PgConnection,
    lines: &[OrderLine],
    payment_window: Duration,
    key: Option<IdempotencyKey<'_>>,
) -> Result<CreatedOrder, StoreError> {
    if lines.is_empty() {
        return Err(StoreError::EmptyOrder);
    }
    if payment_window > MAX_PAYMENT_WINDOW {
        return Err(StoreError::InvalidWindow(payment_window));
    }
    let window = chrono::Duration::from_std(payment_window)
        .map_err(|_| StoreError::InvalidWindow(payment_window))?;
    let merged = merge_lines(lines)?;

    let Some(IdempotencyKey(key)) = key else {
        // One statement: atomic on its own, no transaction round trips.
        return Ok(CreatedOrder {
            order: insert_order(conn, &merged, window, None)?,
            status: OrderStatus::PendingPayment,
            replayed: false,
        });
    };
    conn.transaction(|conn| {
        let request = canonical_request(&merged, payment_window);
        let inserted = diesel::insert_into(idempotency_keys::table)
            .values((
                idempotency_keys::key.eq(key),
                idempotency_keys::request.eq(&request),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        if inserted == 0 {
            return replay(conn, key, &request);
        }
        Ok(CreatedOrder {
            order: insert_order(conn, &merged, window, Some(key))?,
            status: OrderStatus::PendingPayment,
            replayed: false,
        })
    })
}

/// What a key stands for: the merged lines in SKU order and the window, so
/// that `TEA:1, TEA:1` and `TEA:2` are the same request.
fn canonical_request(merged: &BTreeMap<&SkuCode, Quantity>, window: Duration) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for (sku, qty) in merged {
        let _ = write!(s, "{sku}*{},", qty.get());
    }
    let _ = write!(s, "window={}ms", window.as_millis());
    s
}

/// The order an earlier request with this key created.
fn replay(conn: &mut PgConnection, key: &str, request: &str) -> Result<CreatedOrder, StoreError> {
    let (stored, order_id): (String, Option<i64>) = idempotency_keys::table
        .find(key)
        .select((idempotency_keys::request, idempotency_keys::order_id))
        .first(conn)?;
    if stored != request {
        return Err(StoreError::IdempotencyKeyReused(key.to_owned()));
    }
    let order_id =
        order_id.ok_or_else(|| corrupt("idempotency_keys.order_id", "NULL after commit"))?;
    let row: OrderRow = orders::table
        .find(order_id)
        .select(OrderRow::as_select())
        .first(conn)?;
    let order = Order::try_from(row)?;
    Ok(CreatedOrder {
        order: NewOrder {
            id: order_id,
            order_no: order.order_no,
            total: order.total,
            created_at: order.created_at,
            deadline: order.deadline,
        },
        status: order.status,
        replayed: true,
    })
}

/// Merges lines naming the same SKU.
fn merge_lines(lines: &[OrderLine]) -> Result<BTreeMap<&SkuCode, Quantity>, StoreError> {
    let mut merged: BTreeMap<&SkuCode, Quantity> = BTreeMap::new();
    for line in lines {
        match merged.get_mut(&line.sku) {
            Some(q) => {
                *q = q
                    .checked_add(line.quantity)
                    .ok_or_else(|| StoreError::QuantityTooLarge(line.sku.clone()))?;
            }
            None => {
                merged.insert(&line.sku, line.quantity);
            }
        }
    }

    Ok(merged)
}

/// Creates the order in one statement (one round trip, atomic by itself):
/// the SKU rows are locked in id order (as closing does, so the two cannot
/// deadlock), stock is decremented only if every line is available and the
/// total is within [`Fen::MAX`], and then the order, its items, the outbox
/// row and the `created` event are inserted, and the idempotency key (if
/// any) pointed at the order. A SKU priced 0 (created before prices were
/// required) is not for sale: nothing is created. When nothing was created,
/// the locked rows it returns say why: an unknown SKU, one without a price,
/// the first short one, or the total.
const CREATE_ORDER_SQL: &str = "
WITH want AS (
    SELECT w.code, w.qty FROM unnest($1::text[], $2::int4[]) AS w(code, qty)
), locked AS (
    SELECT s.id, s.code, s.stock, s.price_fen, want.qty
      FROM skus s JOIN want ON want.code = s.code
     ORDER BY s.id
       FOR UPDATE OF s
), ok AS (
    SELECT count(*) = $3 AND bool_and(stock >= qty) AND bool_and(price_fen > 0)
           AND sum(price_fen::numeric * qty) <= $4 AS ok
      FROM locked
), upd AS (
    UPDATE skus SET stock = skus.stock - l.qty, updated_at = $5
      FROM locked l, ok
     WHERE skus.id = l.id AND ok.ok
 RETURNING skus.id, l.qty, l.price_fen
), o AS (
    INSERT INTO orders (order_no, status, total_fen, deadline, created_at, updated_at)
    SELECT $6, 'pending_payment', sum(price_fen * qty), $7, $5, $5 FROM upd HAVING count(*) > 0
 RETURNING id, total_fen
), i AS (
    INSERT INTO order_items (order_id, sku_id, quantity, unit_price_fen)
    SELECT o.id, upd.id, upd.qty, upd.price_fen FROM o, upd
), b AS (
    INSERT INTO outbox (order_id, created_at) SELECT id, $5 FROM o
), e AS (
    INSERT INTO order_events (order_id, kind, detail)
    SELECT id, 'created', 'total ' || (total_fen / 100) || '.' || lpad((total_fen % 100)::text, 2, '0')
                          || ' CNY, deadline ' || $8 FROM o
), k AS (
    UPDATE idempotency_keys SET order_id = o.id FROM o WHERE idempotency_keys.key = $9
)
SELECT (SELECT id FROM o) AS order_id,
       (SELECT total_fen FROM o) AS total_fen,
       (SELECT array_agg(code ORDER BY id) FROM locked) AS found_codes,
       (SELECT array_agg(stock ORDER BY id) FROM locked) AS found_stock,
       (SELECT array_agg(qty ORDER BY id) FROM locked) AS found_qty,
       (SELECT array_agg(price_fen ORDER BY id) FROM locked) AS found_price
";

/// The binds of [`CREATE_ORDER_SQL`].
struct CreateOrder {
    codes: Vec<String>,
    qtys: Vec<i32>,
    lines: i64,
    max_total: i64,
    now: DateTime<Utc>,
    order_no: String,
    deadline: DateTime<Utc>,
    deadline_text: String,
    key: Option<String>,
}

impl Prepared for CreateOrder {
    const SQL: &'static str = CREATE_ORDER_SQL;

    fn bind<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz};
        match n {
            1 => out.push_bind_param::<Array<Text>, _>(&self.codes),
            2 => out.push_bind_param::<Array<Integer>, _>(&self.qtys),
            3 => out.push_bind_param::<BigInt, _>(&self.lines),
            4 => out.push_bind_param::<BigInt, _>(&self.max_total),
            5 => out.push_bind_param::<Timestamptz, _>(&self.now),
            6 => out.push_bind_param::<Text, _>(&self.order_no),
            7 => out.push_bind_param::<Timestamptz, _>(&self.deadline),
            8 => out.push_bind_param::<Text, _>(&self.deadline_text),
            9 => out.push_bind_param::<Nullable<Text>, _>(&self.key),
            n => Err(unknown_placeholder(n)),
        }
    }
}

#[derive(QueryableByName)]
struct CreateRow {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    order_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    total_fen: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Array<diesel::sql_types::Text>>)]
    found_codes: Option<Vec<String>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Array<diesel::sql_types::Integer>>)]
    found_stock: Option<Vec<i32>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Array<diesel::sql_types::Integer>>)]
    found_qty: Option<Vec<i32>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Array<diesel::sql_types::BigInt>>)]
    found_price: Option<Vec<i64>>,
}

/// Reserves the stock and inserts a new order ([`CREATE_ORDER_SQL`]).
fn insert_order(
    conn: &mut PgConnection,
    merged: &BTreeMap<&SkuCode, Quantity>,
    window: chrono::Duration,
    key: Option<&str>,
) -> Result<NewOrder, StoreError> {
    // Microseconds: what PostgreSQL stores, so the values returned equal
    // the values read back.
    let created_at = Utc::now().trunc_subsecs(6);
    let deadline = created_at + window;
    let order_no = OrderNo::generate(created_at);
    if let [(code, qty)] = merged.iter().collect::<Vec<_>>()[..] {
        return insert_one_line(
            conn,
            code,
            *qty,
            NewOrderTimes {
                order_no,
                created_at,
                deadline,
            },
            key,
        );
    }
    let row: CreateRow = Statement(CreateOrder {
        codes: merged.keys().map(|c| c.as_str().to_owned()).collect(),
        qtys: merged.values().map(|q| q.get() as i32).collect(),
        lines: merged.len() as i64,
        max_total: Fen::MAX,
        now: created_at,
        order_no: order_no.as_str().to_owned(),
        deadline,
        deadline_text: deadline.to_string(),
        key: key.map(str::to_owned),
    })
    .get_result(conn)?;
    if let (Some(id), Some(total)) = (row.order_id, row.total_fen) {
        return Ok(NewOrder {
            id,
            order_no,
            total: Fen::new(total).map_err(|e| corrupt("orders.total_fen", e))?,
            created_at,
            deadline,
        });
    }
    Err(why_not_created(merged, &row))
}

/// An order of one line: no lock order to keep (one SKU row), so no
/// `SELECT ... FOR UPDATE` before the update, which costs PostgreSQL about a
/// third of the statement (pgbench here: 3,500 against 5,100 per second).
/// The stock update's own condition decides (a SKU priced 0 is not for
/// sale); when it matched nothing, a read says why.
const CREATE_ONE_LINE_SQL: &str = "
WITH upd AS (
    UPDATE skus SET stock = stock - $1, updated_at = $2
     WHERE code = $3 AND stock >= $1 AND price_fen > 0 AND price_fen * $1 <= $4
 RETURNING id, price_fen
), o AS (
    INSERT INTO orders (order_no, status, total_fen, deadline, created_at, updated_at)
    SELECT $5, 'pending_payment', price_fen * $1, $6, $2, $2 FROM upd
 RETURNING id, total_fen
), i AS (
    INSERT INTO order_items (order_id, sku_id, quantity, unit_price_fen)
    SELECT o.id, upd.id, $1, upd.price_fen FROM o, upd
), b AS (
    INSERT INTO outbox (order_id, created_at) SELECT id, $2 FROM o
), e AS (
    INSERT INTO order_events (order_id, kind, detail)
    SELECT id, 'created', 'total ' || (total_fen / 100) || '.' || lpad((total_fen % 100)::text, 2, '0')
                          || ' CNY, deadline ' || $7 FROM o
), k AS (
    UPDATE idempotency_keys SET order_id = o.id FROM o WHERE idempotency_keys.key = $8
)
SELECT (SELECT id FROM o) AS order_id, (SELECT total_fen FROM o) AS total_fen,
       NULL::text[] AS found_codes, NULL::int4[] AS found_stock, NULL::int4[] AS found_qty,
       NULL::int8[] AS found_price
";

/// The binds of [`CREATE_ONE_LINE_SQL`].
struct CreateOneLine {
    code: String,
    qty: i32,
    max_total: i64,
    now: DateTime<Utc>,
    order_no: String,
    deadline: DateTime<Utc>,
    deadline_text: String,
    key: Option<String>,
}

impl Prepared for CreateOneLine {
    const SQL: &'static str = CREATE_ONE_LINE_SQL;

    fn bind<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};
        match n {
            1 => out.push_bind_param::<Integer, _>(&self.qty),
            2 => out.push_bind_param::<Timestamptz, _>(&self.now),
            3 => out.push_bind_param::<Text, _>(&self.code),
            4 => out.push_bind_param::<BigInt, _>(&self.max_total),
            5 => out.push_bind_param::<Text, _>(&self.order_no),
            6 => out.push_bind_param::<Timestamptz, _>(&self.deadline),
            7 => out.push_bind_param::<Text, _>(&self.deadline_text),
            8 => out.push_bind_param::<Nullable<Text>, _>(&self.key),
            n => Err(unknown_placeholder(n)),
        }
    }
}

/// Number and times of an order about to be inserted.
struct NewOrderTimes {
    order_no: OrderNo,
    created_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
}

/// [`insert_order`] for one line ([`CREATE_ONE_LINE_SQL`]).
fn insert_one_line(
    conn: &mut PgConnection,
    code: &SkuCode,
    qty: Quantity,
    t: NewOrderTimes,
    key: Option<&str>,
) -> Result<NewOrder, StoreError> {
    let wanted = qty.get() as i32;
    let mut seen = 0;
    // Another attempt only when the stock seen after a refusal would have
    // sufficed (it arrived in between); a third such race is reported as
    // insufficient stock, with the stock last seen.
    for _ in 0..3 {
        let row: CreateRow = Statement(CreateOneLine {
            code: code.as_str().to_owned(),
            qty: wanted,
            max_total: Fen::MAX,
            now: t.created_at,
            order_no: t.order_no.as_str().to_owned(),
            deadline: t.deadline,
            deadline_text: t.deadline.to_string(),
            key: key.map(str::to_owned),
        })
        .get_result(conn)?;
        if let (Some(id), Some(total)) = (row.order_id, row.total_fen) {
            return Ok(NewOrder {
                id,
                order_no: t.order_no,
                total: Fen::new(total).map_err(|e| corrupt("orders.total_fen", e))?,
                created_at: t.created_at,
                deadline: t.deadline,
            });
        }
        let Some((stock, price)) = skus::table
            .filter(skus::code.eq(code.as_str()))
            .select((skus::stock, skus::price_fen))
            .first::<(i32, i64)>(conn)
            .optional()?
        else {
            return Err(StoreError::UnknownSku(code.clone()));
        };
        if price < 1 {
            return Err(StoreError::NotForSale(code.clone()));
        }
        if stock < wanted {
            return Err(StoreError::InsufficientStock {
                sku: code.clone(),
                requested: qty.get(),
                available: stock.max(0) as u32,
            });
        }
        seen = stock;
        if i128::from(price) * i128::from(wanted) > i128::from(Fen::MAX) {
            return Err(StoreError::TotalTooLarge);
        }
    }
    Err(StoreError::InsufficientStock {
        sku: code.clone(),
        requested: qty.get(),
        available: seen.max(0) as u32,
    })
}

/// Why [`CREATE_ORDER_SQL`] created nothing, from the rows it locked.
fn why_not_created(merged: &BTreeMap<&SkuCode, Quantity>, row: &CreateRow) -> StoreError {
    let found = row.found_codes.as_deref().unwrap_or_default();
    if let Some(unknown) = merged
        .keys()
        .find(|c| !found.iter().any(|f| f == c.as_str()))
    {
        return StoreError::UnknownSku((*unknown).clone());
    }
    let price = row.found_price.as_deref().unwrap_or_default();
    if let Some((code, _)) = found.iter().zip(price).find(|(_, p)| **p < 1) {
        return match SkuCode::parse(code) {
            Ok(sku) => StoreError::NotForSale(sku),
            Err(e) => corrupt("skus.code", e),
        };
    }
    let stock = row.found_stock.as_deref().unwrap_or_default();
    let qty = row.found_qty.as_deref().unwrap_or_default();
    for ((code, stock), qty) in found.iter().zip(stock).zip(qty) {
        if stock < qty {
            return match SkuCode::parse(code) {
                Ok(sku) => StoreError::InsufficientStock {
                    sku,
                    requested: *qty as u32,
                    available: (*stock).max(0) as u32,
                },
                Err(e) => corrupt("skus.code", e),
            };
        }
    }
    StoreError::TotalTooLarge
}

/// The row id of the order `order_no`, if there is one.
pub(crate) fn order_id_of(
    conn: &mut PgConnection,
    order_no: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(orders::table
        .filter(orders::order_no.eq(order_no))
        .select(orders::id)
        .first(conn)
        .optional()?)
}

pub(crate) fn record_event(
    conn: &mut PgConnection,
    order_id: i64,
    kind: &str,
    detail: &str,
) -> Result<(), StoreError> {
    diesel::insert_into(order_events::table)
        .values(NewEventRow {
            order_id,
            kind,
            detail,
        })
        .execute(conn)?;
    Ok(())
}

/// Records, once, that a payment order was created at WeChat Pay for this
/// order (a `prepay` event with `detail`); a repeated prepay of the same
/// order adds nothing. Returns whether the event was written; `NotFound`
/// when no order has this number. Status and stock are left alone.
pub fn record_prepay(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    detail: &str,
) -> Result<Option<bool>, StoreError> {
    conn.transaction(|conn| {
        // Lock the order so that two prepays racing write one event.
        let Some(order_id) = orders::table
            .filter(orders::order_no.eq(order_no.as_str()))
            .select(orders::id)
            .for_update()
            .first::<i64>(conn)
            .optional()?
        else {
            return Ok(None);
        };
        let known: bool = diesel::select(diesel::dsl::exists(
            order_events::table
                .filter(order_events::order_id.eq(order_id))
                .filter(order_events::kind.eq("prepay")),
        ))
        .get_result(conn)?;
        if known {
            return Ok(Some(false));
        }
        record_event(conn, order_id, "prepay", detail)?;
        Ok(Some(true))
    })
}

/// The order with this number, or `None`. Read-only.
pub fn find_order(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<Option<Order>, StoreError> {
    orders::table
        .filter(orders::order_no.eq(order_no.as_str()))
        .select(OrderRow::as_select())
        .first(conn)
        .optional()?
        .map(Order::try_from)
        .transpose()
}

/// The lines of an order, by SKU code. Read-only.
pub fn order_items(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<Vec<OrderItem>, StoreError> {
    order_items::table
        .inner_join(orders::table)
        .inner_join(skus::table)
        .filter(orders::order_no.eq(order_no.as_str()))
        .order(skus::code.asc())
        .select((
            skus::code,
            order_items::quantity,
            order_items::unit_price_fen,
        ))
        .load::<(String, i32, i64)>(conn)?
        .into_iter()
        .map(|(code, qty, price)| {
            Ok(OrderItem {
                sku: SkuCode::parse(&code).map_err(|e| corrupt("skus.code", e))?,
                quantity: Quantity::new(qty as u32)
                    .map_err(|e| corrupt("order_items.quantity", e))?,
                unit_price: Fen::new(price)
                    .map_err(|e| corrupt("order_items.unit_price_fen", e))?,
            })
        })
        .collect()
}

/// What [`close_unpaid`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum CloseOutcome {
    /// This call closed the order and gave `units` units back over `lines` lines.
    Closed { lines: usize, units: u64 },
    /// The order was already closed; nothing changed.
    AlreadyClosed,
    /// The order is paid; nothing changed.
    AlreadyPaid,
    /// No order has this number.
    NotFound,
}

/// Closes a pending order unpaid: status `closed`, every item's stock given
/// back and a `closed` event with `reason`, all in one statement (so one
/// transaction, and one round trip).
///
/// Only the call that moves the order out of `pending_payment` gives stock
/// back (invariant 1). A repeated or concurrent call changes nothing and
/// returns `AlreadyClosed` (or `AlreadyPaid` if a payment won the race).
/// The caller must know the order is unpaid at WeChat Pay (invariant 7).
///
/// `recheck_at`, when given, schedules the order's one recheck for a payment
/// order created at WeChat Pay after this close (see
/// [`crate::finish_recheck`]); it is set in the same transaction, so a
/// closed order can never miss it. A recorded anomaly is cleared: the order
/// has left `pending_payment` on a trustworthy answer.
pub fn close_unpaid(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    reason: &str,
    recheck_at: Option<DateTime<Utc>>,
) -> Result<CloseOutcome, StoreError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        closed: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        lines: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        units: i64,
    }
    let row: Row = Statement(ClosePending {
        now: Utc::now(),
        reason: reason.to_owned(),
        recheck_at,
        order_no: order_no.as_str().to_owned(),
    })
    .get_result(conn)?;
    if row.closed == 1 {
        return Ok(CloseOutcome::Closed {
            lines: usize::try_from(row.lines).unwrap_or_default(),
            units: u64::try_from(row.units).unwrap_or_default(),
        });
    }
    // Not pending: a second, rare statement (with a snapshot of its own, so
    // a payment that committed while the close waited for its row is seen).
    Ok(match current_status(conn, order_no)? {
        None => CloseOutcome::NotFound,
        Some(OrderStatus::Paid) => CloseOutcome::AlreadyPaid,
        // Pending cannot be seen here: the UPDATE waited for any concurrent
        // writer and re-checked the row.
        Some(OrderStatus::Closed | OrderStatus::PendingPayment) => CloseOutcome::AlreadyClosed,
    })
}

/// [`close_unpaid`] in one statement, atomic by itself (no `BEGIN`/`COMMIT`
/// round trips): the order leaves `pending_payment`, and only if it did,
/// its items' stock comes back and a `closed` event is written. The SKU
/// rows are locked in id order first, like `create_order` locks them, so
/// that a close and an order for the same SKUs cannot deadlock.
const CLOSE_PENDING_SQL: &str = "
WITH o AS (
    UPDATE orders SET status = 'closed', closed_at = $1, updated_at = $1,
                      close_reason = $2, recheck_at = $3,
                      anomaly = NULL, anomaly_at = NULL
     WHERE order_no = $4 AND status = 'pending_payment'
 RETURNING id
), i AS (
    SELECT sku_id, quantity FROM order_items WHERE order_id IN (SELECT id FROM o)
), l AS MATERIALIZED (
    SELECT skus.id FROM skus WHERE skus.id IN (SELECT sku_id FROM i)
     ORDER BY skus.id FOR UPDATE
), s AS (
    UPDATE skus SET stock = skus.stock + i.quantity, updated_at = $1
      FROM i WHERE skus.id = i.sku_id AND skus.id IN (SELECT id FROM l)
 RETURNING i.quantity
), e AS (
    INSERT INTO order_events (order_id, kind, detail) SELECT id, 'closed', $2 FROM o
)
SELECT (SELECT count(*) FROM o) AS closed,
       (SELECT count(*) FROM s) AS lines,
       (SELECT coalesce(sum(quantity), 0)::bigint FROM s) AS units
";

/// The binds of [`CLOSE_PENDING_SQL`].
struct ClosePending {
    now: DateTime<Utc>,
    reason: String,
    recheck_at: Option<DateTime<Utc>>,
    order_no: String,
}

impl Prepared for ClosePending {
    const SQL: &'static str = CLOSE_PENDING_SQL;

    fn bind<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Nullable, Text, Timestamptz};
        match n {
            1 => out.push_bind_param::<Timestamptz, _>(&self.now),
            2 => out.push_bind_param::<Text, _>(&self.reason),
            3 => out.push_bind_param::<Nullable<Timestamptz>, _>(&self.recheck_at),
            4 => out.push_bind_param::<Text, _>(&self.order_no),
            n => Err(unknown_placeholder(n)),
        }
    }
}

fn current_status(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<Option<OrderStatus>, StoreError> {
    orders::table
        .filter(orders::order_no.eq(order_no.as_str()))
        .select(orders::status)
        .first::<OrderStatus>(conn)
        .optional()
        .map_err(StoreError::from)
}

/// A payment as WeChat Pay reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub transaction_id: TransactionId,
    pub amount: Fen,
    pub success_time: DateTime<Utc>,
}

/// What [`mark_paid`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum MarkPaidOutcome {
    /// This call moved the order from pending to paid and recorded the payment.
    Paid,
    /// The order was already paid; nothing changed.
    AlreadyPaid,
    /// The order had been closed (its stock given back) and is paid after
    /// all: the payment is recorded as `paid_after_close` for a refund.
    /// `newly_recorded` is false when this payment was already on record.
    PaidAfterClose { newly_recorded: bool },
    /// This transaction id is already recorded for another order: nothing
    /// changed (the answer cannot be about this order; a human must look).
    TransactionOfAnotherOrder { other: OrderNo },
    /// No order has this number.
    NotFound,
}

/// Records that the order was paid: pending -> paid, a payment row and a
/// `paid` event, one transaction; the stock stays sold.
///
/// Repeat: `AlreadyPaid`, nothing changes. On an order already closed: the
/// payment is recorded with `paid_after_close` and a `paid_after_close` event
/// (someone must refund it), stock is left alone, its pending recheck is
/// done; a repeat finds the payment and records nothing more (invariant 2).
/// A transaction id already recorded for another order changes nothing and
/// returns `TransactionOfAnotherOrder`, also when two such calls race.
/// Moving a pending order to paid clears a recorded anomaly.
pub fn mark_paid(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    payment: &PaymentRecord,
) -> Result<MarkPaidOutcome, StoreError> {
    let first = match pay_pending(conn, order_no, payment) {
        Ok(true) => return Ok(MarkPaidOutcome::Paid),
        // Not pending (or no such order): the general path says what it is.
        Ok(false) => mark_paid_tx(conn, order_no, payment),
        Err(e) => Err(e),
    };
    match first {
        // Two orders raced to record the same transaction id: the loser's
        // insert hit the unique index and rolled back.
        Err(StoreError::Constraint { ref constraint, .. })
            if constraint == "payments_transaction_id_key" =>
        {
            match transaction_holder(conn, &payment.transaction_id)? {
                Some(other) if &other != order_no => {
                    Ok(MarkPaidOutcome::TransactionOfAnotherOrder { other })
                }
                _ => mark_paid_tx(conn, order_no, payment),
            }
        }
        other => other,
    }
}

/// The common case in one statement (atomic by itself): a pending order
/// turns paid with its payment row and `paid` event. `false` when the order
/// is not pending (or unknown): nothing changed. A transaction id recorded
/// for another order fails the whole statement on the unique index.
const PAY_PENDING_SQL: &str = "
WITH o AS (
    UPDATE orders SET status = 'paid', paid_at = $1, updated_at = $2,
                      anomaly = NULL, anomaly_at = NULL
     WHERE order_no = $3 AND status = 'pending_payment'
 RETURNING id
), p AS (
    INSERT INTO payments (order_id, transaction_id, amount_fen, success_time, paid_after_close)
    SELECT id, $4, $5, $1, false FROM o
), e AS (
    INSERT INTO order_events (order_id, kind, detail) SELECT id, 'paid', $6 FROM o
)
SELECT count(*) AS n FROM o
";

/// The binds of [`PAY_PENDING_SQL`].
struct PayPending {
    order_no: String,
    success_time: DateTime<Utc>,
    now: DateTime<Utc>,
    transaction_id: String,
    amount: i64,
    detail: String,
}

impl Prepared for PayPending {
    const SQL: &'static str = PAY_PENDING_SQL;

    fn bind<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{BigInt, Text, Timestamptz};
        match n {
            1 => out.push_bind_param::<Timestamptz, _>(&self.success_time),
            2 => out.push_bind_param::<Timestamptz, _>(&self.now),
            3 => out.push_bind_param::<Text, _>(&self.order_no),
            4 => out.push_bind_param::<Text, _>(&self.transaction_id),
            5 => out.push_bind_param::<BigInt, _>(&self.amount),
            6 => out.push_bind_param::<Text, _>(&self.detail),
            n => Err(unknown_placeholder(n)),
        }
    }
}

fn pay_pending(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    payment: &PaymentRecord,
) -> Result<bool, StoreError> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let row: Count = Statement(PayPending {
        order_no: order_no.as_str().to_owned(),
        success_time: payment.success_time,
        now: Utc::now(),
        transaction_id: payment.transaction_id.as_str().to_owned(),
        amount: payment.amount.get(),
        detail: format!("transaction {}, {}", payment.transaction_id, payment.amount),
    })
    .get_result(conn)?;
    Ok(row.n == 1)
}

/// The order a transaction id is recorded for, if any.
fn transaction_holder(
    conn: &mut PgConnection,
    transaction_id: &TransactionId,
) -> Result<Option<OrderNo>, StoreError> {
    payments::table
        .inner_join(orders::table)
        .filter(payments::transaction_id.eq(transaction_id.as_str()))
        .select(orders::order_no)
        .first::<String>(conn)
        .optional()?
        .map(|no| OrderNo::parse(&no).map_err(|e| corrupt("orders.order_no", e)))
        .transpose()
}

fn mark_paid_tx(
    conn: &mut PgConnection,
    order_no: &OrderNo,
    payment: &PaymentRecord,
) -> Result<MarkPaidOutcome, StoreError> {
    conn.transaction(|conn| {
        if let Some(other) = transaction_holder(conn, &payment.transaction_id)? {
            if &other != order_no {
                return Ok(MarkPaidOutcome::TransactionOfAnotherOrder { other });
            }
        }
        let now = Utc::now();
        let paid: Option<i64> = diesel::update(
            orders::table
                .filter(orders::order_no.eq(order_no.as_str()))
                .filter(orders::status.eq(OrderStatus::PendingPayment)),
        )
        .set((
            orders::status.eq(OrderStatus::Paid),
            orders::paid_at.eq(payment.success_time),
            orders::updated_at.eq(now),
            orders::anomaly.eq(None::<String>),
            orders::anomaly_at.eq(None::<DateTime<Utc>>),
        ))
        .returning(orders::id)
        .get_result(conn)
        .optional()?;
        if let Some(order_id) = paid {
            let _ = insert_payment(conn, order_id, payment, false)?;
            record_event(
                conn,
                order_id,
                "paid",
                &format!("transaction {}, {}", payment.transaction_id, payment.amount),
            )?;
            return Ok(MarkPaidOutcome::Paid);
        }
        // Not pending. Lock the order so that two reports of the same late
        // payment cannot both record it.
        let Some((order_id, status)) = orders::table
            .filter(orders::order_no.eq(order_no.as_str()))
            .select((orders::id, orders::status))
            .for_update()
            .first::<(i64, OrderStatus)>(conn)
            .optional()?
        else {
            return Ok(MarkPaidOutcome::NotFound);
        };
        match status {
            OrderStatus::Paid | OrderStatus::PendingPayment => Ok(MarkPaidOutcome::AlreadyPaid),
            OrderStatus::Closed => {
                // Whatever the recheck was looking for has been found.
                diesel::update(orders::table.find(order_id))
                    .set(orders::recheck_at.eq(None::<DateTime<Utc>>))
                    .execute(conn)?;
                let known: bool = diesel::select(diesel::dsl::exists(
                    payments::table
                        .filter(payments::order_id.eq(order_id))
                        .filter(payments::transaction_id.eq(payment.transaction_id.as_str())),
                ))
                .get_result(conn)?;
                if known {
                    return Ok(MarkPaidOutcome::PaidAfterClose {
                        newly_recorded: false,
                    });
                }
                let payment_id = insert_payment(conn, order_id, payment, true)?;
                record_event(
                    conn,
                    order_id,
                    "paid_after_close",
                    &format!(
                        "transaction {}, {}: paid after the order was closed, refund needed",
                        payment.transaction_id, payment.amount
                    ),
                )?;
                // The refund is born with the payment it gives back: it can
                // never be forgotten, and never doubled (one per payment).
                let out_refund_no = if payment.amount.get() > 0 {
                    Some(crate::refunds::create_refund(
                        conn,
                        order_id,
                        order_no,
                        payment_id,
                        payment.amount,
                        "paid after close",
                    )?)
                } else {
                    None
                };
                let refund = out_refund_no
                    .as_deref()
                    .unwrap_or("(nothing to refund: 0 fen)");
                log::warn!(
                    order_no:% = order_no,
                    outcome = "paid_after_close",
                    out_refund_no = out_refund_no.as_deref();
                    "order {order_no} was paid after it had been closed (transaction {}, {}): refund {refund} queued",
                    payment.transaction_id,
                    payment.amount
                );
                Ok(MarkPaidOutcome::PaidAfterClose {
                    newly_recorded: true,
                })
            }
        }
    })
}

/// Inserts a payment row; its id.
pub(crate) fn insert_payment(
    conn: &mut PgConnection,
    order_id: i64,
    payment: &PaymentRecord,
    paid_after_close: bool,
) -> Result<i64, StoreError> {
    Ok(diesel::insert_into(payments::table)
        .values(NewPaymentRow {
            order_id,
            transaction_id: payment.transaction_id.as_str(),
            amount_fen: payment.amount.get(),
            success_time: payment.success_time,
            paid_after_close,
        })
        .returning(payments::id)
        .get_result(conn)?)
}

/// Payments recorded for an order, oldest first. Read-only.
pub fn payments_of(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<Vec<Payment>, StoreError> {
    payments::table
        .inner_join(orders::table)
        .filter(orders::order_no.eq(order_no.as_str()))
        .order(payments::id.asc())
        .select(PaymentRow::as_select())
        .load(conn)?
        .into_iter()
        .map(Payment::try_from)
        .collect()
}

/// The audit trail of an order, oldest first. Read-only.
pub fn order_events(
    conn: &mut PgConnection,
    order_no: &OrderNo,
) -> Result<Vec<OrderEvent>, StoreError> {
    Ok(order_events::table
        .inner_join(orders::table)
        .filter(orders::order_no.eq(order_no.as_str()))
        .order(order_events::id.asc())
        .select(EventRow::as_select())
        .load(conn)?
        .into_iter()
        .map(OrderEvent::from)
        .collect())
}

/// An order the sweep may look at, with its place in the keyset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverdueOrder {
    pub id: i64,
    pub order_no: OrderNo,
    pub deadline: DateTime<Utc>,
    /// Earlier sweep passes that could not settle it.
    pub check_failures: u32,
}

impl OverdueOrder {
    /// Where the next page of [`pending_past_deadline`] starts.
    #[must_use]
    pub fn cursor(&self) -> SweepCursor {
        SweepCursor {
            deadline: self.deadline,
            id: self.id,
        }
    }
}

type OverdueRow = (i64, String, DateTime<Utc>, i32);

impl TryFrom<OverdueRow> for OverdueOrder {
    type Error = StoreError;
    fn try_from((id, no, deadline, failures): OverdueRow) -> Result<Self, StoreError> {
        Ok(OverdueOrder {
            id,
            order_no: OrderNo::parse(&no).map_err(|e| corrupt("orders.order_no", e))?,
            deadline,
            check_failures: u32::try_from(failures)
                .map_err(|e| corrupt("orders.check_failures", e))?,
        })
    }
}

/// A position in the sweep's keyset order `(deadline, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepCursor {
    pub deadline: DateTime<Utc>,
    pub id: i64,
}

/// One page of pending orders whose deadline is before `before`, in
/// `(deadline, id)` order after `after`, at most `limit`: what the sweep
/// settles. Leaves out orders with an anomaly (a human's) and orders whose
/// `next_check_at` is after `now` (asked recently, see [`defer_check`]).
/// Paging by keyset reaches every overdue order in one pass however many of
/// the oldest stay unsettled. Uses `orders_pending_deadline_idx`. Read-only.
pub fn pending_past_deadline(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    after: Option<SweepCursor>,
    limit: i64,
) -> Result<Vec<OverdueOrder>, StoreError> {
    let mut query = orders::table
        .filter(orders::status.eq(OrderStatus::PendingPayment))
        .filter(orders::anomaly.is_null())
        .filter(orders::deadline.lt(before))
        .filter(
            orders::next_check_at
                .is_null()
                .or(orders::next_check_at.le(now)),
        )
        .into_boxed();
    if let Some(c) = after {
        query = query.filter(
            orders::deadline
                .gt(c.deadline)
                .or(orders::deadline.eq(c.deadline).and(orders::id.gt(c.id))),
        );
    }
    query
        .order((orders::deadline.asc(), orders::id.asc()))
        .limit(limit)
        .select((
            orders::id,
            orders::order_no,
            orders::deadline,
            orders::check_failures,
        ))
        .load::<OverdueRow>(conn)?
        .into_iter()
        .map(OverdueOrder::try_from)
        .collect()
}

/// Closed orders whose recheck was due before `before`, by id after
/// `after_id`, at most `limit`, leaving out those deferred past `now` and
/// those with an anomaly (a human's): the
/// sweep's safety net for recheck messages that were lost. Read-only.
pub fn rechecks_due(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    after_id: i64,
    limit: i64,
) -> Result<Vec<OverdueOrder>, StoreError> {
    orders::table
        .filter(orders::recheck_at.lt(before))
        // A recheck that found an answer needing a human is the human's now:
        // asking again every pass would change nothing.
        .filter(orders::anomaly.is_null())
        .filter(orders::id.gt(after_id))
        .filter(
            orders::next_check_at
                .is_null()
                .or(orders::next_check_at.le(now)),
        )
        .order(orders::id.asc())
        .limit(limit)
        .select((
            orders::id,
            orders::order_no,
            orders::deadline,
            orders::check_failures,
        ))
        .load::<OverdueRow>(conn)?
        .into_iter()
        .map(OverdueOrder::try_from)
        .collect()
}

/// How many orders are in each status (statuses with none included, as 0).
/// Read-only.
pub fn count_by_status(conn: &mut PgConnection) -> Result<Vec<(OrderStatus, i64)>, StoreError> {
    let counts: BTreeMap<String, i64> = orders::table
        .group_by(orders::status)
        .select((orders::status, diesel::dsl::count_star()))
        .load::<(String, i64)>(conn)?
        .into_iter()
        .collect();
    Ok(OrderStatus::ALL
        .into_iter()
        .map(|s| (s, counts.get(s.as_str()).copied().unwrap_or(0)))
        .collect())
}

/// Number of payments recorded after their order had been closed: each one
/// needs a refund. Read-only.
pub fn paid_after_close_count(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(payments::table
        .filter(payments::paid_after_close.eq(true))
        .count()
        .get_result(conn)?)
}
