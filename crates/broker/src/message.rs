//! The delay message contract: JSON body
//! `{"order_no": "...", "created_at": "RFC3339", "deadline": "RFC3339"}`,
//! `content_type=application/json`, persistent, `message_id` = order number,
//! `timestamp` set. Unknown fields are ignored; a body that does not parse is
//! a poison message.

use amiquip::AmqpProperties;
use chrono::{DateTime, Utc};
use domain::OrderNo;
use serde::{Deserialize, Serialize};

/// Bodies larger than this are poison: a real one is about 120 bytes.
pub const MAX_BODY_BYTES: usize = 4096;

/// "Look at this order when its payment window has passed."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutMessage {
    pub order_no: OrderNo,
    pub created_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
}

/// Why a body is not a timeout message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body of {0} bytes exceeds the {MAX_BODY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("body is not a timeout message: {0}")]
    Malformed(String),
    #[error("invalid order number {value:?}: {reason}")]
    InvalidOrderNo { value: String, reason: String },
}

#[derive(Serialize)]
struct Wire<'a> {
    order_no: &'a str,
    created_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
}

#[derive(Deserialize)]
struct WireIn {
    order_no: String,
    created_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
}

impl TimeoutMessage {
    /// The JSON body.
    #[must_use]
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Wire {
            order_no: self.order_no.as_str(),
            created_at: self.created_at,
            deadline: self.deadline,
        })
        .expect("serializing strings and timestamps cannot fail")
    }

    /// The AMQP properties of the contract; `now` becomes the timestamp.
    #[must_use]
    pub fn properties(&self, now: DateTime<Utc>) -> AmqpProperties {
        AmqpProperties::default()
            .with_content_type("application/json".to_owned())
            .with_delivery_mode(2)
            .with_message_id(self.order_no.as_str().to_owned())
            .with_timestamp(now.timestamp().max(0) as u64)
    }

    /// Parses a body; anything else is a poison message.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(DecodeError::TooLarge(body.len()));
        }
        let wire: WireIn =
            serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let order_no = OrderNo::parse(&wire.order_no).map_err(|e| DecodeError::InvalidOrderNo {
            value: wire.order_no.chars().take(64).collect(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            order_no,
            created_at: wire.created_at,
            deadline: wire.deadline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TimeoutMessage {
        TimeoutMessage {
            order_no: OrderNo::parse("20261126080000000ABCDEFGHIJ").unwrap(),
            created_at: "2026-11-26T08:00:00Z".parse().unwrap(),
            deadline: "2026-11-26T08:30:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn body_is_the_contract_json_and_round_trips() {
        let m = sample();
        let json: serde_json::Value = serde_json::from_slice(&m.body()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "order_no": "20261126080000000ABCDEFGHIJ",
                "created_at": "2026-11-26T08:00:00Z",
                "deadline": "2026-11-26T08:30:00Z"
            })
        );
        assert_eq!(TimeoutMessage::decode(&m.body()), Ok(m));
    }

    #[test]
    fn properties_follow_the_contract() {
        let p = sample().properties("2026-11-26T08:00:01Z".parse().unwrap());
        assert_eq!(p.content_type().as_deref(), Some("application/json"));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.message_id().as_deref(),
            Some("20261126080000000ABCDEFGHIJ")
        );
        assert_eq!(*p.timestamp(), Some(1_795_680_001));
    }

    #[test]
    fn unknown_fields_are_ignored_and_offsets_accepted() {
        let body = br#"{"order_no":"abc123","created_at":"2026-11-26T16:00:00+08:00",
                        "deadline":"2026-11-26T08:30:00Z","shop":"x","v":2}"#;
        let m = TimeoutMessage::decode(body).unwrap();
        assert_eq!(m.order_no.as_str(), "abc123");
        assert_eq!(
            m.created_at,
            "2026-11-26T08:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn poison_bodies_are_rejected_with_a_reason() {
        assert!(matches!(
            TimeoutMessage::decode(b"not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            TimeoutMessage::decode(br#"{"order_no":"abc123"}"#),
            Err(DecodeError::Malformed(m)) if m.contains("created_at")
        ));
        assert!(matches!(
            TimeoutMessage::decode(
                br#"{"order_no":"no/slash","created_at":"2026-11-26T08:00:00Z","deadline":"2026-11-26T08:00:00Z"}"#
            ),
            Err(DecodeError::InvalidOrderNo { .. })
        ));
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            TimeoutMessage::decode(&huge),
            Err(DecodeError::TooLarge(MAX_BODY_BYTES + 1))
        );
    }
}
