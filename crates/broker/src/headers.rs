//! The worker's `x-ot-*` headers on a timeout message: how many attempts it
//! had, why it was retried or parked, when it was parked, and whether it is
//! the recheck after an `ORDER_NOT_EXIST` close. One codec for the worker
//! (which writes them) and `order-producer parked` (which reads and clears
//! them), so the two cannot drift apart.

use amiquip::{AmqpProperties, AmqpValue, FieldTable};
use chrono::{DateTime, Utc};

/// Settlement attempts the message has had (absent: 0).
pub const ATTEMPT: &str = "x-ot-attempt";
/// Why it was retried or parked: a short code from a fixed set
/// (`retry`, `poison`, `unknown_order`, `permanent_error`,
/// `retries_exhausted`, `topology`, or an anomaly such as `amount_mismatch`).
pub const REASON: &str = "x-ot-reason";
/// The same in words, for humans (at most 1,000 characters).
pub const DETAIL: &str = "x-ot-detail";
/// When it was parked, RFC 3339.
pub const PARKED_AT: &str = "x-ot-parked-at";
/// Present (true) on the one recheck of an order closed because WeChat Pay
/// had no payment order: look for a payment order created after the close.
pub const RECHECK: &str = "x-ot-recheck";

/// Headers that describe one stay in the worker; a replay clears them (the
/// recheck marker stays: a replayed recheck is still a recheck).
pub const PER_ATTEMPT: [&str; 4] = [ATTEMPT, REASON, DETAIL, PARKED_AT];

const MAX_DETAIL_CHARS: usize = 1000;

fn headers(properties: &AmqpProperties) -> Option<&FieldTable> {
    properties.headers().as_ref()
}

/// The attempt count carried by a message (0 when absent or unreadable).
#[must_use]
pub fn attempt_of(properties: &AmqpProperties) -> u32 {
    headers(properties)
        .and_then(|h| h.get(ATTEMPT))
        .and_then(|v| match v {
            AmqpValue::LongLongInt(n) => u32::try_from(*n).ok(),
            AmqpValue::LongInt(n) => u32::try_from(*n).ok(),
            AmqpValue::LongUInt(n) => Some(*n),
            AmqpValue::ShortInt(n) => u32::try_from(*n).ok(),
            AmqpValue::ShortUInt(n) => Some(u32::from(*n)),
            _ => None,
        })
        .unwrap_or(0)
}

/// True for the recheck message of a closed order.
#[must_use]
pub fn is_recheck(properties: &AmqpProperties) -> bool {
    matches!(
        headers(properties).and_then(|h| h.get(RECHECK)),
        Some(AmqpValue::Boolean(true))
    )
}

/// A header as text, for listings (`None` when absent).
#[must_use]
pub fn text_of(properties: &AmqpProperties, key: &str) -> Option<String> {
    headers(properties)
        .and_then(|h| h.get(key))
        .map(|v| match v {
            AmqpValue::LongString(s) => s.clone(),
            AmqpValue::LongLongInt(n) => n.to_string(),
            AmqpValue::LongInt(n) => n.to_string(),
            AmqpValue::Boolean(b) => b.to_string(),
            other => format!("{other:?}"),
        })
}

/// What the worker writes on a copy it hands on (to a retry queue or the
/// parking queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Annotation<'a> {
    pub attempt: u32,
    /// A short code (see [`REASON`]).
    pub reason: &'a str,
    pub detail: &'a str,
    /// `Some(when)` for a parked copy.
    pub parked_at: Option<DateTime<Utc>>,
}

/// `properties` with the annotation's headers set (others kept).
#[must_use]
pub fn annotate(properties: &AmqpProperties, a: Annotation<'_>) -> AmqpProperties {
    let mut h: FieldTable = properties.headers().clone().unwrap_or_default();
    h.insert(ATTEMPT.into(), AmqpValue::LongLongInt(i64::from(a.attempt)));
    h.insert(REASON.into(), AmqpValue::LongString(a.reason.to_owned()));
    let detail: String = a.detail.chars().take(MAX_DETAIL_CHARS).collect();
    h.insert(DETAIL.into(), AmqpValue::LongString(detail));
    match a.parked_at {
        Some(at) => {
            h.insert(PARKED_AT.into(), AmqpValue::LongString(at.to_rfc3339()));
        }
        None => {
            h.remove(PARKED_AT);
        }
    }
    properties.clone().with_headers(h)
}

/// `properties` marked as the recheck of a closed order, with a fresh
/// attempt count.
#[must_use]
pub fn as_recheck(properties: &AmqpProperties) -> AmqpProperties {
    let mut h = cleared(properties).headers().clone().unwrap_or_default();
    h.insert(RECHECK.into(), AmqpValue::Boolean(true));
    properties.clone().with_headers(h)
}

/// `properties` without the per-attempt headers: a fresh start.
#[must_use]
pub fn cleared(properties: &AmqpProperties) -> AmqpProperties {
    let mut h: FieldTable = properties.headers().clone().unwrap_or_default();
    for key in PER_ATTEMPT {
        h.remove(key);
    }
    properties.clone().with_headers(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempt_is_read_in_any_integer_type() {
        let mut h = FieldTable::new();
        assert_eq!(attempt_of(&AmqpProperties::default()), 0);
        h.insert(ATTEMPT.into(), AmqpValue::LongInt(3));
        assert_eq!(
            attempt_of(&AmqpProperties::default().with_headers(h.clone())),
            3
        );
        h.insert(ATTEMPT.into(), AmqpValue::ShortUInt(4));
        assert_eq!(
            attempt_of(&AmqpProperties::default().with_headers(h.clone())),
            4
        );
        h.insert(ATTEMPT.into(), AmqpValue::LongString("x".into()));
        assert_eq!(attempt_of(&AmqpProperties::default().with_headers(h)), 0);
    }

    #[test]
    fn annotations_round_trip_and_a_replay_clears_them_but_keeps_the_recheck() {
        let mut h = FieldTable::new();
        h.insert("x-other".into(), AmqpValue::LongString("kept".into()));
        let base = AmqpProperties::default().with_headers(h);
        let recheck = as_recheck(&base);
        assert!(is_recheck(&recheck));
        assert!(!is_recheck(&base));
        let parked = annotate(
            &recheck,
            Annotation {
                attempt: 8,
                reason: "amount_mismatch",
                detail: &"d".repeat(2000),
                parked_at: Some(Utc::now()),
            },
        );
        assert_eq!(attempt_of(&parked), 8);
        assert_eq!(text_of(&parked, REASON).as_deref(), Some("amount_mismatch"));
        assert_eq!(text_of(&parked, DETAIL).unwrap().len(), 1000);
        assert!(text_of(&parked, PARKED_AT).is_some());
        let fresh = cleared(&parked);
        assert_eq!(attempt_of(&fresh), 0);
        for key in PER_ATTEMPT {
            assert_eq!(text_of(&fresh, key), None, "{key}");
        }
        assert!(is_recheck(&fresh));
        assert_eq!(text_of(&fresh, "x-other").as_deref(), Some("kept"));
        // A retry copy is not parked.
        let retry = annotate(
            &parked,
            Annotation {
                attempt: 9,
                reason: "retry",
                detail: "503",
                parked_at: None,
            },
        );
        assert_eq!(text_of(&retry, PARKED_AT), None);
    }
}
