//! The order and inventory model and its PostgreSQL store.
//!
//! This crate owns the schema (embedded diesel migrations), the value types
//! that can only be built valid ([`OrderNo`], [`Fen`], [`SkuCode`],
//! [`Quantity`], ...), and the repository operations that move orders
//! between `pending_payment`, `paid` and `closed` while keeping stock
//! conserved. It knows nothing of RabbitMQ or HTTP, and never reads the
//! environment: callers hand it a [`DatabaseUrl`] or a connection.
//!
//! Repository functions take `&mut PgConnection`, run their own transaction
//! where they change anything, and say in their docs what a repeated call
//! does.

pub mod close_batch;
pub mod db;
pub mod decisions;
pub mod error;
pub mod events;
pub mod followup;
pub mod models;
pub mod order_no;
pub mod orders;
pub mod outbox;
pub mod pool;
mod prepared;
pub mod reconcile;
pub mod refunds;
pub mod schema;
pub mod stock;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod values;

pub use db::{
    build_counted_pool, build_pool, checkout, connect, pending_migrations, run_migrations,
    DatabaseUrl, PgPool, PooledConnection, SweepLock,
};
pub use decisions::{
    accept_payment, acceptable, claim_refund, clear_anomaly, confirm_refund, note_decision,
    open_anomaly, parked_refund, refund_payment, reopen_refund, Decision, DecisionError,
    RefundQueued,
};
pub use diesel::PgConnection;
pub use error::{ConstraintKind, StoreError};
pub use events::order_events;
pub use followup::{
    defer_check, finish_recheck, needs_human, needs_human_count, overdue_pending, record_anomaly,
    AnomalyOutcome, NeedsHuman,
};
pub use models::{Order, OrderEvent, OrderItem, Payment, Sku};
pub use order_no::{OrderNo, OrderNoError};
pub use orders::{
    close_unpaid, count_by_status, create_order, create_order_idempotent, find_order, mark_paid,
    order_items, paid_after_close_count, payments_of, pending_past_deadline, rechecks_due,
    record_prepay, CloseOutcome, CreatedOrder, IdempotencyKey, MarkPaidOutcome, NewOrder,
    OrderLine, OverdueOrder, PaymentRecord, SweepCursor, MAX_PAYMENT_WINDOW,
};
pub use outbox::{
    outbox_backlog, relay_batch, unpublished_count, OutboxMessage, PublishReport, RelayBatch,
};
pub use refunds::{
    claim_due_refunds, find_refund, park_refund, record_refund_status, refund_counts,
    refunds_needing_human, refunds_needing_human_count, refunds_of, retry_refund_later, Refund,
    RefundStatus, RefundUpdate,
};
pub use stock::{get_sku, list_skus, set_stock, stock_balances, StockBalance, StockChange};
pub use values::{
    Anomaly, Fen, OrderStatus, Quantity, SkuCode, StockLevel, TransactionId, ValueError,
};
