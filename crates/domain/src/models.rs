//! What the repository hands out: read models built from database rows,
//! with every column parsed into its domain type. The raw row structs
//! (`Queryable`/`Selectable`/`Insertable`) stay private to this crate.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::error::StoreError;
use crate::order_no::OrderNo;
use crate::schema::{order_events, orders, payments, skus};
use crate::values::{Anomaly, Fen, OrderStatus, Quantity, SkuCode, TransactionId};

/// A SKU and the units of it available for sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sku {
    pub id: i64,
    pub code: SkuCode,
    /// Units available for sale (not counting units held by orders).
    pub stock: u32,
    pub price: Fen,
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: i64,
    pub order_no: OrderNo,
    pub status: OrderStatus,
    pub total: Fen,
    pub deadline: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub close_reason: Option<String>,
    /// Set when a WeChat Pay answer did not match the order: a human must look.
    pub anomaly: Option<Anomaly>,
    /// A closed order's one pending recheck for a payment order created
    /// after the close (set when it was closed on `ORDER_NOT_EXIST`).
    pub recheck_at: Option<DateTime<Utc>>,
    /// The sweep does not ask about this order before then.
    pub next_check_at: Option<DateTime<Utc>>,
    /// Sweep passes that could not settle the order.
    pub check_failures: u32,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderItem {
    pub sku: SkuCode,
    pub quantity: Quantity,
    pub unit_price: Fen,
}

/// A payment recorded for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub transaction_id: TransactionId,
    pub amount: Fen,
    pub success_time: DateTime<Utc>,
    /// The order had been closed (stock given back) before this payment was
    /// learned of: it must be refunded.
    pub paid_after_close: bool,
}

/// One entry of an order's audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEvent {
    pub kind: String,
    pub detail: String,
    pub created_at: DateTime<Utc>,
    /// Who decided (an operator's `--by`, on `decision` events); `None`
    /// for the system's own events.
    pub actor: Option<String>,
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = skus, check_for_backend(diesel::pg::Pg))]
pub(crate) struct SkuRow {
    id: i64,
    code: String,
    stock: i32,
    price_fen: i64,
}

impl TryFrom<SkuRow> for Sku {
    type Error = StoreError;
    fn try_from(r: SkuRow) -> Result<Self, StoreError> {
        Ok(Sku {
            id: r.id,
            code: SkuCode::parse(&r.code).map_err(|e| corrupt("skus.code", e))?,
            stock: u32::try_from(r.stock).map_err(|e| corrupt("skus.stock", e))?,
            price: Fen::new(r.price_fen).map_err(|e| corrupt("skus.price_fen", e))?,
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg))]
pub(crate) struct OrderRow {
    id: i64,
    order_no: String,
    status: OrderStatus,
    total_fen: i64,
    deadline: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    closed_at: Option<DateTime<Utc>>,
    close_reason: Option<String>,
    anomaly: Option<String>,
    recheck_at: Option<DateTime<Utc>>,
    next_check_at: Option<DateTime<Utc>>,
    check_failures: i32,
}

impl TryFrom<OrderRow> for Order {
    type Error = StoreError;
    fn try_from(r: OrderRow) -> Result<Self, StoreError> {
        Ok(Order {
            id: r.id,
            order_no: OrderNo::parse(&r.order_no).map_err(|e| corrupt("orders.order_no", e))?,
            status: r.status,
            total: Fen::new(r.total_fen).map_err(|e| corrupt("orders.total_fen", e))?,
            deadline: r.deadline,
            created_at: r.created_at,
            updated_at: r.updated_at,
            paid_at: r.paid_at,
            closed_at: r.closed_at,
            close_reason: r.close_reason,
            anomaly: r
                .anomaly
                .as_deref()
                .map(Anomaly::parse)
                .transpose()
                .map_err(|e| corrupt("orders.anomaly", e))?,
            recheck_at: r.recheck_at,
            next_check_at: r.next_check_at,
            check_failures: u32::try_from(r.check_failures)
                .map_err(|e| corrupt("orders.check_failures", e))?,
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = payments)]
pub(crate) struct NewPaymentRow<'a> {
    pub order_id: i64,
    pub transaction_id: &'a str,
    pub amount_fen: i64,
    pub success_time: DateTime<Utc>,
    pub paid_after_close: bool,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = payments, check_for_backend(diesel::pg::Pg))]
pub(crate) struct PaymentRow {
    transaction_id: String,
    amount_fen: i64,
    success_time: DateTime<Utc>,
    paid_after_close: bool,
}

impl TryFrom<PaymentRow> for Payment {
    type Error = StoreError;
    fn try_from(r: PaymentRow) -> Result<Self, StoreError> {
        Ok(Payment {
            transaction_id: TransactionId::parse(&r.transaction_id)
                .map_err(|e| corrupt("payments.transaction_id", e))?,
            amount: Fen::new(r.amount_fen).map_err(|e| corrupt("payments.amount_fen", e))?,
            success_time: r.success_time,
            paid_after_close: r.paid_after_close,
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = order_events)]
pub(crate) struct NewEventRow<'a> {
    pub order_id: i64,
    pub kind: &'a str,
    pub detail: &'a str,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = order_events, check_for_backend(diesel::pg::Pg))]
pub(crate) struct EventRow {
    kind: String,
    detail: String,
    created_at: DateTime<Utc>,
    actor: Option<String>,
}

impl From<EventRow> for OrderEvent {
    fn from(r: EventRow) -> Self {
        OrderEvent {
            kind: r.kind,
            detail: r.detail,
            created_at: r.created_at,
            actor: r.actor,
        }
    }
}
