//! The store's error type: what went wrong, typed so callers can decide
//! (an unknown SKU is the buyer's mistake, a lost connection is retryable, a
//! constraint violation names the constraint).

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::values::SkuCode;

/// Which kind of database constraint rejected a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    Unique,
    Check,
    ForeignKey,
    NotNull,
}

/// Everything a repository operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an order needs at least one item")]
    EmptyOrder,
    #[error(
        "unknown SKU {0}; create it first with `order-producer stock set --sku {0} --quantity N`"
    )]
    UnknownSku(SkuCode),
    #[error("insufficient stock for SKU {sku}: {requested} requested, {available} available")]
    InsufficientStock {
        sku: SkuCode,
        requested: u32,
        available: u32,
    },
    #[error(
        "SKU {0} needs a price of at least 1 fen; give it with `order-producer stock set --sku {0} --quantity N --price-fen P`"
    )]
    PriceRequired(SkuCode),
    #[error(
        "SKU {0} is not for sale: it has no price; set one with `order-producer stock set --sku {0} --quantity N --price-fen P`"
    )]
    NotForSale(SkuCode),
    #[error("quantity for SKU {0} is too large")]
    QuantityTooLarge(SkuCode),
    #[error("order total is too large")]
    TotalTooLarge,
    #[error("Idempotency-Key {0:?} was already used with another request")]
    IdempotencyKeyReused(String),
    #[error("payment window of {0:?} is out of range (at most 366 days)")]
    InvalidWindow(std::time::Duration),
    /// An operator's decision that does not apply to the case as it stands
    /// (unknown, already decided, the wrong kind): nothing was changed.
    #[error("refused: {0}")]
    Refused(String),
    #[error("the database rejected the change: {kind:?} constraint {constraint} ({message})")]
    Constraint {
        kind: ConstraintKind,
        constraint: String,
        message: String,
    },
    #[error("the database holds a value this program cannot read: {0}")]
    Corrupt(String),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("could not connect to the database: {0}")]
    Connect(String),
    #[error("database error: {0}")]
    Database(#[source] DieselError),
}

impl StoreError {
    /// True for failures that may go away by themselves (connection lost,
    /// serialization failure, pool timeout): retry the whole operation later.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) => true,
            Self::Database(e) => matches!(
                e,
                DieselError::DatabaseError(
                    DatabaseErrorKind::ClosedConnection
                        | DatabaseErrorKind::UnableToSendCommand
                        | DatabaseErrorKind::SerializationFailure,
                    _
                ) | DieselError::BrokenTransactionManager
            ),
            _ => false,
        }
    }
}

impl From<DieselError> for StoreError {
    fn from(e: DieselError) -> Self {
        if let DieselError::DatabaseError(kind, info) = &e {
            let kind = match kind {
                DatabaseErrorKind::UniqueViolation => Some(ConstraintKind::Unique),
                DatabaseErrorKind::CheckViolation => Some(ConstraintKind::Check),
                DatabaseErrorKind::ForeignKeyViolation => Some(ConstraintKind::ForeignKey),
                DatabaseErrorKind::NotNullViolation => Some(ConstraintKind::NotNull),
                _ => None,
            };
            if let Some(kind) = kind {
                return Self::Constraint {
                    kind,
                    constraint: info.constraint_name().unwrap_or("(unnamed)").to_owned(),
                    message: info.message().to_owned(),
                };
            }
        }
        Self::Database(e)
    }
}
