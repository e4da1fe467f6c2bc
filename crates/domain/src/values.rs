//! Small value types that can only be built valid: money in fen, SKU codes,
//! item quantities, stock levels and order statuses. Parse, don't validate:
//! each has a private field and a `parse`/`new` that is the only way in.

use std::fmt;

/// Why a value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("SKU code must be 1 to 64 characters of A-Z a-z 0-9 . _ -, got {0:?}")]
    SkuCode(String),
    #[error("quantity must be a whole number from 1 to {max}, got {0:?}", max = Quantity::MAX)]
    Quantity(String),
    #[error("stock must be a whole number from 0 to {max}, got {0:?}", max = StockLevel::MAX)]
    Stock(String),
    #[error("amount in fen must be a whole number from 0 to {max}, got {0:?}", max = Fen::MAX)]
    Fen(String),
    #[error("transaction id must be 1 to 64 printable ASCII characters, got {0:?}")]
    TransactionId(String),
    #[error("unknown order status {0:?} (expected pending_payment, paid or closed)")]
    Status(String),
    #[error("unknown anomaly {0:?}")]
    Anomaly(String),
}

/// Money in integer fen (1 yuan = 100 fen), never negative. WeChat Pay
/// amounts are integer fen too, so no floating point ever touches money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Fen(i64);

impl Fen {
    /// Largest amount accepted; far beyond any order, small enough that a
    /// sum of a few thousand line totals cannot overflow `i64`.
    pub const MAX: i64 = 1_000_000_000_000;
    pub const ZERO: Fen = Fen(0);

    pub fn new(fen: i64) -> Result<Self, ValueError> {
        if (0..=Self::MAX).contains(&fen) {
            Ok(Self(fen))
        } else {
            Err(ValueError::Fen(fen.to_string()))
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        s.trim()
            .parse::<i64>()
            .ok()
            .and_then(|v| Self::new(v).ok())
            .ok_or_else(|| ValueError::Fen(s.to_owned()))
    }

    #[must_use]
    pub fn get(self) -> i64 {
        self.0
    }

    /// `self * quantity`, or `None` past [`Fen::MAX`].
    #[must_use]
    pub fn times(self, quantity: Quantity) -> Option<Fen> {
        self.0
            .checked_mul(i64::from(quantity.get()))
            .and_then(|v| Fen::new(v).ok())
    }

    /// `self + other`, or `None` past [`Fen::MAX`].
    #[must_use]
    pub fn checked_add(self, other: Fen) -> Option<Fen> {
        self.0.checked_add(other.0).and_then(|v| Fen::new(v).ok())
    }
}

impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02} CNY", self.0 / 100, self.0 % 100)
    }
}

/// A SKU code: 1 to 64 characters of `A-Z a-z 0-9 . _ -`. Also the form the
/// command line uses in `--item CODE:QTY`, hence no `:`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SkuCode(String);

impl TryFrom<String> for SkuCode {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        Self::parse(&s)
    }
}

impl From<SkuCode> for String {
    fn from(code: SkuCode) -> String {
        code.0
    }
}

impl SkuCode {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValueError::SkuCode(s.to_owned()))
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SkuCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many units of one SKU an order line holds: at least 1.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u32", into = "u32")]
pub struct Quantity(u32);

impl TryFrom<u32> for Quantity {
    type Error = ValueError;
    fn try_from(n: u32) -> Result<Self, ValueError> {
        Self::new(n)
    }
}

impl From<Quantity> for u32 {
    fn from(q: Quantity) -> u32 {
        q.0
    }
}

impl Quantity {
    /// Upper bound per line; keeps every sum of lines inside `i32` stock.
    pub const MAX: u32 = 1_000_000;

    pub fn new(n: u32) -> Result<Self, ValueError> {
        if (1..=Self::MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(ValueError::Quantity(n.to_string()))
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        s.trim()
            .parse::<u32>()
            .ok()
            .and_then(|v| Self::new(v).ok())
            .ok_or_else(|| ValueError::Quantity(s.to_owned()))
    }

    #[must_use]
    pub fn get(self) -> u32 {
        self.0
    }

    /// `self + other`, or `None` past [`Quantity::MAX`].
    #[must_use]
    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        Quantity::new(self.0 + other.0).ok()
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Units of a SKU available for sale: 0 or more, and within the `INTEGER`
/// column that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StockLevel(u32);

impl StockLevel {
    pub const MAX: u32 = 1_000_000_000;

    pub fn new(n: u32) -> Result<Self, ValueError> {
        if n <= Self::MAX {
            Ok(Self(n))
        } else {
            Err(ValueError::Stock(n.to_string()))
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        s.trim()
            .parse::<u32>()
            .ok()
            .and_then(|v| Self::new(v).ok())
            .ok_or_else(|| ValueError::Stock(s.to_owned()))
    }

    #[must_use]
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for StockLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where an order is in its life. Stored as text; these three strings are the
/// contract with scripts and operators. Mapped to the `orders.status` column
/// by diesel (below), so rows carry the enum, never a free string.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum OrderStatus {
    /// Created, stock reserved, waiting for payment.
    PendingPayment,
    /// Paid; the stock stays sold.
    Paid,
    /// Closed unpaid; its stock was given back.
    Closed,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 3] = [Self::PendingPayment, Self::Paid, Self::Closed];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending_payment",
            Self::Paid => "paid",
            Self::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ValueError::Status(s.to_owned()))
    }
}

impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for OrderStatus {
    fn to_sql<'b>(
        &'b self,
        out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
    ) -> diesel::serialize::Result {
        <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
            self.as_str(),
            out,
        )
    }
}

impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for OrderStatus {
    fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let text = <String as diesel::deserialize::FromSql<
            diesel::sql_types::Text,
            diesel::pg::Pg,
        >>::from_sql(bytes)?;
        Ok(Self::parse(&text)?)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a WeChat Pay answer about an order could not be acted on, so that
/// the order waits for a human (stored in `orders.anomaly`; the strings are
/// the contract shown by `status` and in a parked message's `x-ot-reason`).
/// An order with an anomaly is neither paid nor closed because of that
/// answer: a pending one keeps its stock held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Anomaly {
    /// The paid total differs from the order's total, or its currency is not CNY.
    AmountMismatch,
    /// A paid answer without `amount` or `amount.total`.
    MissingAmount,
    /// A paid answer whose `success_time` is missing or not RFC 3339.
    BadSuccessTime,
    /// A paid answer without a usable `transaction_id`.
    MissingTransactionId,
    /// The `transaction_id` is already recorded for another order.
    DuplicateTransaction,
}

impl Anomaly {
    pub const ALL: [Anomaly; 5] = [
        Self::AmountMismatch,
        Self::MissingAmount,
        Self::BadSuccessTime,
        Self::MissingTransactionId,
        Self::DuplicateTransaction,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AmountMismatch => "amount_mismatch",
            Self::MissingAmount => "missing_amount",
            Self::BadSuccessTime => "bad_success_time",
            Self::MissingTransactionId => "missing_transaction_id",
            Self::DuplicateTransaction => "duplicate_transaction",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ValueError::Anomaly(s.to_owned()))
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WeChat Pay `transaction_id`: 1 to 64 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransactionId(String);

impl TransactionId {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        if (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValueError::TransactionId(s.to_owned()))
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `"..".parse::<T>()` is the same as `T::parse("..")` for every value type.
macro_rules! from_str_by_parse {
    ($($t:ty),* $(,)?) => {$(
        impl std::str::FromStr for $t {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                Self::parse(s)
            }
        }
    )*};
}

from_str_by_parse!(
    Fen,
    SkuCode,
    Quantity,
    StockLevel,
    OrderStatus,
    Anomaly,
    TransactionId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_type_parses_through_from_str() {
        assert_eq!("1999".parse::<Fen>().map(Fen::get), Ok(1999));
        assert_eq!("TEA".parse::<SkuCode>().unwrap().as_str(), "TEA");
        assert_eq!("2".parse::<Quantity>().map(Quantity::get), Ok(2));
        assert_eq!("0".parse::<StockLevel>().map(StockLevel::get), Ok(0));
        assert_eq!("paid".parse::<OrderStatus>(), Ok(OrderStatus::Paid));
        assert_eq!(
            "amount_mismatch".parse::<Anomaly>(),
            Ok(Anomaly::AmountMismatch)
        );
        assert!("4200".parse::<TransactionId>().is_ok());
        assert!("x y".parse::<TransactionId>().is_err());
    }

    #[test]
    fn fen_bounds_and_arithmetic() {
        assert_eq!(Fen::new(0).map(Fen::get), Ok(0));
        assert!(Fen::new(-1).is_err());
        assert!(Fen::new(Fen::MAX + 1).is_err());
        assert_eq!(Fen::parse(" 1999 ").map(Fen::get), Ok(1999));
        assert!(Fen::parse("19.99").is_err());
        let price = Fen::new(1999).unwrap();
        assert_eq!(price.times(Quantity::new(3).unwrap()), Fen::new(5997).ok());
        assert_eq!(
            Fen::new(Fen::MAX).unwrap().times(Quantity::new(2).unwrap()),
            None
        );
        assert_eq!(price.checked_add(Fen::new(1).unwrap()), Fen::new(2000).ok());
        assert_eq!(price.to_string(), "19.99 CNY");
    }

    #[test]
    fn sku_code_accepts_and_rejects() {
        assert!(SkuCode::parse("TSHIRT-RED_L.v2").is_ok());
        assert!(SkuCode::parse(&"A".repeat(64)).is_ok());
        for bad in ["", "has space", "A:B", "ünï", &"A".repeat(65)] {
            assert_eq!(
                SkuCode::parse(bad),
                Err(ValueError::SkuCode(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn quantity_is_at_least_one_and_bounded() {
        assert!(Quantity::new(0).is_err());
        assert_eq!(Quantity::parse("1").map(Quantity::get), Ok(1));
        assert!(Quantity::parse("-1").is_err());
        assert!(Quantity::parse("x").is_err());
        assert!(Quantity::new(Quantity::MAX + 1).is_err());
        let max = Quantity::new(Quantity::MAX).unwrap();
        assert_eq!(max.checked_add(Quantity::new(1).unwrap()), None);
    }

    #[test]
    fn stock_level_allows_zero_not_negative() {
        assert_eq!(StockLevel::parse("0").map(StockLevel::get), Ok(0));
        assert!(StockLevel::parse("-3").is_err());
        assert!(StockLevel::new(StockLevel::MAX + 1).is_err());
    }

    #[test]
    fn transaction_id_is_printable_ascii() {
        assert!(TransactionId::parse("4200001234202611260000000001").is_ok());
        assert!(TransactionId::parse("").is_err());
        assert!(TransactionId::parse("has space").is_err());
        assert!(TransactionId::parse(&"9".repeat(65)).is_err());
    }

    #[test]
    fn anomalies_round_trip_through_their_contract_strings() {
        for a in Anomaly::ALL {
            assert_eq!(Anomaly::parse(a.as_str()), Ok(a));
        }
        assert!(Anomaly::parse("AMOUNT_MISMATCH").is_err());
    }

    #[test]
    fn status_round_trips_through_its_contract_strings() {
        for st in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(st.as_str()), Ok(st));
        }
        assert_eq!(
            OrderStatus::parse("PAID"),
            Err(ValueError::Status("PAID".into()))
        );
    }
}
