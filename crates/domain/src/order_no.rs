//! `OrderNo`: an order number that is always a valid WeChat Pay
//! `out_trade_no` (6 to 32 of `0-9 a-z A-Z _ - | *`).

use std::fmt;

use chrono::{DateTime, Utc};
use rand::Rng;

/// Why a string is not an order number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderNoError {
    #[error("order number must be 6 to 32 characters long, got {0}")]
    Length(usize),
    #[error("order number may only contain 0-9 a-z A-Z _ - | *, found {0:?}")]
    Character(char),
}

/// An order number, valid as a WeChat Pay `out_trade_no`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct OrderNo(String);

const RANDOM_SUFFIX_LEN: usize = 10;
const SUFFIX_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

impl OrderNo {
    /// Parses an order number; the only way in besides [`OrderNo::generate`].
    pub fn parse(s: &str) -> Result<Self, OrderNoError> {
        let len = s.chars().count();
        if !(6..=32).contains(&len) {
            return Err(OrderNoError::Length(len));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '|' | '*')))
        {
            return Err(OrderNoError::Character(c));
        }
        Ok(Self(s.to_owned()))
    }

    /// A new order number: the UTC creation time to the millisecond (17
    /// digits, so numbers sort by creation) and 10 random characters of
    /// `0-9A-Z`. 27 characters in all. A collision needs two orders in the
    /// same millisecond drawing the same one of 36^10 (about 3.6e15)
    /// suffixes; the unique constraint on `orders.order_no` catches it anyway.
    #[must_use]
    pub fn generate(now: DateTime<Utc>) -> Self {
        let mut rng = rand::rng();
        let mut s = now.format("%Y%m%d%H%M%S%3f").to_string();
        s.extend(
            (0..RANDOM_SUFFIX_LEN)
                .map(|_| char::from(SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())])),
        );
        debug_assert!(
            Self::parse(&s).is_ok(),
            "generated order number {s} is invalid"
        );
        Self(s)
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for OrderNo {
    type Err = OrderNoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn accepts_every_allowed_character_and_both_length_bounds() {
        assert!(OrderNo::parse("abcXYZ").is_ok());
        assert!(OrderNo::parse("09_-|*aZ").is_ok());
        assert!(OrderNo::parse(&"a".repeat(32)).is_ok());
    }

    #[test]
    fn rejects_bad_lengths_and_characters() {
        assert_eq!(OrderNo::parse("abcde"), Err(OrderNoError::Length(5)));
        assert_eq!(
            OrderNo::parse(&"a".repeat(33)),
            Err(OrderNoError::Length(33))
        );
        assert_eq!(OrderNo::parse(""), Err(OrderNoError::Length(0)));
        assert_eq!(OrderNo::parse("abc def"), Err(OrderNoError::Character(' ')));
        assert_eq!(OrderNo::parse("abcdé12"), Err(OrderNoError::Character('é')));
        assert_eq!(
            OrderNo::parse("order/123"),
            Err(OrderNoError::Character('/'))
        );
    }

    #[test]
    fn generated_numbers_are_valid_unique_and_sort_by_time() {
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::milliseconds(1);
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let n = OrderNo::generate(t0);
            assert_eq!(n.as_str().len(), 27);
            assert_eq!(OrderNo::parse(n.as_str()).as_ref(), Ok(&n));
            assert!(seen.insert(n), "duplicate order number");
        }
        assert!(OrderNo::generate(t0) < OrderNo::generate(t1));
    }
}
