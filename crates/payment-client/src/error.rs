//! Errors of a call (prepay, query, close, refund, refund query, trade bill), classified for the worker: transient (try
//! again later, the order's payment state is unknown) or permanent (retrying
//! will not help; park and tell a human).

use std::time::Duration;

use crate::bill::BillError;
use crate::verify::VerifyError;

/// Back-off suggested after a 429 that carries no usable `Retry-After`.
pub const DEFAULT_RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(1);

/// A failed call. Whatever the variant, the caller learned nothing about the
/// payment: it must not treat the order as paid or unpaid.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Refused before sending: not a valid `out_trade_no`. Permanent.
    #[error("invalid out_trade_no {0:?}: expected 6 to 32 of 0-9 a-z A-Z _ - | *")]
    InvalidOutTradeNo(String),
    /// Refused before sending: another request field breaks a WeChat Pay
    /// rule (e.g. an empty or over-long `description`, a total of 0 fen).
    /// Permanent.
    #[error("invalid {field}: {reason}; not sent to WeChat Pay")]
    InvalidArgument {
        field: &'static str,
        reason: &'static str,
    },
    /// No connection could be made (DNS, refused, unreachable, connect
    /// timeout): the request was not sent. Transient.
    #[error("cannot connect to WeChat Pay at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: ureq::Error,
    },
    /// The connection broke while sending or receiving. The request may have
    /// been processed. Transient.
    #[error("network error talking to WeChat Pay at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
    /// No complete answer within the configured timeout. Transient.
    #[error("WeChat Pay did not answer in time ({url}): {source}")]
    Timeout {
        url: String,
        #[source]
        source: ureq::Error,
    },
    /// The response failed signature verification (forged, tampered, stale,
    /// signed by a key we do not know, or not from WeChat Pay at all, e.g. a
    /// proxy's error page). Never acted upon. Transient.
    #[error("untrusted response from WeChat Pay (HTTP {status}): {reason}; not acted upon")]
    Unverified {
        status: u16,
        #[source]
        reason: VerifyError,
    },
    /// 429: slow down. Transient, with a back-off hint.
    #[error("WeChat Pay rate limit (HTTP 429 {code}: {message}); retry after {retry_after:?}")]
    RateLimited {
        code: String,
        message: String,
        retry_after: Duration,
    },
    /// 5xx (`SYSTEM_ERROR`, `SERVICE_UNAVAILABLE`, ...). Transient.
    #[error("WeChat Pay server error (HTTP {status} {code}: {message})")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    /// Any other 4xx (`SIGN_ERROR`, `PARAM_ERROR`, `NO_AUTH`, ...): the
    /// request itself is wrong, or (prepay) the order can no longer take it:
    /// 403 `ORDERPAID`, 400 `ORDER_CLOSED`, 400 `INVALID_REQUEST` (the same
    /// `out_trade_no` with other parameters); or (refund) 404
    /// `RESOURCE_NOT_EXISTS` (no such transaction), 403 `NOT_ENOUGH`
    /// (merchant balance too low), 400 `INVALID_REQUEST`. Permanent as far
    /// as this call goes; the code is [`Error::provider_code`]. (A refund
    /// refused with `NOT_ENOUGH` may succeed once the balance is topped up:
    /// that is the caller's decision, with the same `out_refund_no`.)
    #[error("WeChat Pay rejected the request (HTTP {status} {code}: {message})")]
    Rejected {
        status: u16,
        code: String,
        message: String,
        /// The optional `detail` object, as sent.
        detail: Option<serde_json::Value>,
    },
    /// A verified 200 whose `trade_state` we do not know. Permanent: the code
    /// must learn the new state before this order can be settled.
    #[error(
        "WeChat Pay reported unknown trade_state {state:?} for {out_trade_no}; refusing to guess"
    )]
    UnknownTradeState { out_trade_no: String, state: String },
    /// A verified 200 whose refund `status` we do not know. Permanent: the
    /// code must learn the new status before this refund can be acted on.
    #[error(
        "WeChat Pay reported unknown refund status {status:?} for {out_refund_no}; refusing to guess"
    )]
    UnknownRefundStatus {
        out_refund_no: String,
        status: String,
    },
    /// A verified response we cannot make sense of (bad JSON, unexpected
    /// status, an answer about another order or refund). Permanent.
    #[error("unexpected response from WeChat Pay (HTTP {status}): {reason}")]
    UnexpectedResponse { status: u16, reason: String },
    /// OpenSSL failed to sign. Permanent (the key is unusable).
    #[error("cannot sign the request: {0}")]
    Signing(#[source] openssl::error::ErrorStack),
    /// The trade bill's download was refused, or the file did not match its
    /// `hash_value` or did not parse: nothing of it may be used. Permanent:
    /// retrying at once returns the same file. (A refused, truncated or
    /// mismatched download may succeed with a fresh link, i.e. a later
    /// [`crate::Client::trade_bill`]; the caller decides when.)
    #[error("cannot use the trade bill: {0}")]
    Bill(#[from] BillError),
}

impl Error {
    /// True when trying again later may succeed: network trouble, timeouts,
    /// 5xx, 429 and unverifiable responses.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::Transport { .. }
            | Self::Timeout { .. }
            | Self::Unverified { .. }
            | Self::RateLimited { .. }
            | Self::Server { .. } => true,
            Self::InvalidOutTradeNo(_)
            | Self::InvalidArgument { .. }
            | Self::Rejected { .. }
            | Self::UnknownTradeState { .. }
            | Self::UnknownRefundStatus { .. }
            | Self::UnexpectedResponse { .. }
            | Self::Signing(_)
            | Self::Bill(_) => false,
        }
    }

    /// The opposite of [`Error::is_transient`].
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }

    /// How long WeChat Pay asked us to wait (429), if it did.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// WeChat Pay's error code (`SIGN_ERROR`, `SYSTEM_ERROR`, ...), when the
    /// response carried one.
    #[must_use]
    pub fn provider_code(&self) -> Option<&str> {
        match self {
            Self::RateLimited { code, .. }
            | Self::Server { code, .. }
            | Self::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }

    /// WeChat Pay's error message, when the response carried one.
    #[must_use]
    pub fn provider_message(&self) -> Option<&str> {
        match self {
            Self::RateLimited { message, .. }
            | Self::Server { message, .. }
            | Self::Rejected { message, .. } => Some(message),
            _ => None,
        }
    }
}
