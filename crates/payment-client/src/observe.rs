//! What the client reports about each request it sends, for the binaries'
//! metrics: which call, what came back, how long it took. The client knows
//! nothing about metrics; a binary hands it a [`CallObserver`].

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// The WeChat Pay APIv3 call a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// `POST /v3/pay/transactions/native`
    NativePrepay,
    /// `GET /v3/pay/transactions/out-trade-no/{out_trade_no}`
    Query,
    /// `POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close`
    Close,
    /// `POST /v3/refund/domestic/refunds`
    Refund,
    /// `GET /v3/refund/domestic/refunds/{out_refund_no}`
    RefundQuery,
    /// `GET /v3/bill/tradebill`
    TradeBill,
    /// `GET` of the trade bill's `download_url` (`/v3/billdownload/file`)
    BillDownload,
}

impl Call {
    /// Every call, for pre-registering series.
    pub const ALL: [Call; 7] = [
        Call::NativePrepay,
        Call::Query,
        Call::Close,
        Call::Refund,
        Call::RefundQuery,
        Call::TradeBill,
        Call::BillDownload,
    ];

    /// A short name for labels: `prepay`, `query`, `close`, `refund`,
    /// `refund_query`, `trade_bill`, `bill_download`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NativePrepay => "prepay",
            Self::Query => "query",
            Self::Close => "close",
            Self::Refund => "refund",
            Self::RefundQuery => "refund_query",
            Self::TradeBill => "trade_bill",
            Self::BillDownload => "bill_download",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What came back for one request (after the backup domain, if it was tried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// A verified answer: its HTTP status and, for an error, WeChat Pay's
    /// `code` (`ORDER_NOT_EXIST`, `SYSTEM_ERROR`, ...).
    Answered { status: u16, code: Option<String> },
    /// No connection could be made.
    ConnectError,
    /// No complete answer in time.
    Timeout,
    /// The connection broke while sending or receiving.
    TransportError,
    /// An answer came but its signature did not verify (or it was a replay).
    Unverified,
    /// The request could not be signed.
    SigningError,
}

impl CallResult {
    /// The label value: `2xx` for a success, WeChat Pay's error code for an
    /// error that carries a well-formed one (upper case, digits and `_`, at
    /// most 40 characters, so a strange answer cannot blow up the label
    /// space), else the status class (`4xx`, `5xx`); for a request that got
    /// no verified answer `connect_error`, `timeout`, `transport_error`,
    /// `unverified` or `signing_error`.
    #[must_use]
    pub fn label(&self) -> Cow<'static, str> {
        match self {
            Self::Answered { status, code } => {
                if (200..300).contains(status) {
                    return Cow::Borrowed("2xx");
                }
                match code {
                    Some(c) if is_well_formed_code(c) => Cow::Owned(c.clone()),
                    _ => Cow::Owned(format!("{}xx", status / 100)),
                }
            }
            Self::ConnectError => Cow::Borrowed("connect_error"),
            Self::Timeout => Cow::Borrowed("timeout"),
            Self::TransportError => Cow::Borrowed("transport_error"),
            Self::Unverified => Cow::Borrowed("unverified"),
            Self::SigningError => Cow::Borrowed("signing_error"),
        }
    }

    /// True for anything but a 2xx answer or a verified 4xx that is an
    /// answer in itself: 404 `ORDER_NOT_EXIST`, `RESOURCE_NOT_EXISTS`; 400
    /// `STATEMENT_CREATING` (the bill is not ready), `NO_STATEMENT_EXIST`
    /// (no trades that day).
    #[must_use]
    pub fn is_error(&self) -> bool {
        match self {
            Self::Answered { status, code } => {
                !((200..300).contains(status)
                    || (*status == 404
                        && matches!(
                            code.as_deref(),
                            Some("ORDER_NOT_EXIST" | "RESOURCE_NOT_EXISTS")
                        ))
                    || (*status == 400
                        && matches!(
                            code.as_deref(),
                            Some("STATEMENT_CREATING" | "NO_STATEMENT_EXIST")
                        )))
            }
            _ => true,
        }
    }
}

fn is_well_formed_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 40
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Told about every request the client sent. Called on the calling thread
/// right after the answer (or the failure): keep it cheap.
pub trait CallObserver: Send + Sync + fmt::Debug {
    fn observe(&self, call: Call, result: &CallResult, elapsed: Duration);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, code: Option<&str>) -> CallResult {
        CallResult::Answered {
            status,
            code: code.map(str::to_owned),
        }
    }

    #[test]
    fn labels_are_the_class_or_a_well_formed_code() {
        assert_eq!(answered(200, None).label(), "2xx");
        assert_eq!(answered(204, None).label(), "2xx");
        assert_eq!(
            answered(404, Some("ORDER_NOT_EXIST")).label(),
            "ORDER_NOT_EXIST"
        );
        assert_eq!(answered(500, Some("SYSTEM_ERROR")).label(), "SYSTEM_ERROR");
        assert_eq!(answered(502, None).label(), "5xx");
        assert_eq!(answered(400, Some("")).label(), "4xx");
        assert_eq!(answered(400, Some("not a code")).label(), "4xx");
        assert_eq!(answered(400, Some(&"A".repeat(41))).label(), "4xx");
        assert_eq!(CallResult::Timeout.label(), "timeout");
        assert_eq!(CallResult::Unverified.label(), "unverified");
    }

    #[test]
    fn call_labels_are_distinct() {
        let labels: std::collections::HashSet<_> = Call::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels.len(), Call::ALL.len());
        assert_eq!(Call::TradeBill.as_str(), "trade_bill");
        assert_eq!(Call::BillDownload.as_str(), "bill_download");
    }

    #[test]
    fn not_found_answers_are_not_errors() {
        assert!(!answered(200, None).is_error());
        assert!(!answered(404, Some("ORDER_NOT_EXIST")).is_error());
        assert!(!answered(404, Some("RESOURCE_NOT_EXISTS")).is_error());
        assert!(!answered(400, Some("STATEMENT_CREATING")).is_error());
        assert!(!answered(400, Some("NO_STATEMENT_EXIST")).is_error());
        assert!(answered(400, Some("INVALID_REQUEST")).is_error());
        assert!(answered(404, Some("NO_STATEMENT_EXIST")).is_error());
        assert!(answered(404, Some("NOT_FOUND")).is_error());
        assert!(answered(500, Some("SYSTEM_ERROR")).is_error());
        assert!(CallResult::ConnectError.is_error());
    }
}
