//! What the calls take and return: the native prepay request, the
//! transaction as WeChat Pay reports it (query answers and payment
//! notifications alike), the outcomes of query and close, and domestic
//! refunds (the request, and the refund as WeChat Pay reports it).
//!
//! Parsing is lenient on purpose (every field but `trade_state`, or a
//! refund's `out_refund_no` and `status`, is optional, unknown fields are
//! ignored) because WeChat Pay adds fields and omits those that do not apply
//! to a state. The states are strict: a `trade_state` we do not know must
//! stop the caller, not be mistaken for "unpaid", and a refund `status` we do
//! not know must not be mistaken for "refunded" or "failed".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A native (QR code) prepay order: what [`crate::Client::native_prepay`]
/// sends, with the client's `mchid` and `currency` `CNY` added.
///
/// Asking again with the same parameters is safe: WeChat Pay answers with the
/// same `code_url`. The same `out_trade_no` with other parameters is refused
/// (400 `INVALID_REQUEST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativePrepay {
    /// The app id the merchant is bound to (`wx...`). Not empty.
    pub appid: String,
    /// Shown to the payer: 1 to 127 characters.
    pub description: String,
    /// 6 to 32 of `0-9 a-z A-Z _ - | *`.
    pub out_trade_no: String,
    /// Amount in fen, greater than zero.
    pub total_fen: i64,
    /// RFC 3339 with offset, e.g. `2026-11-26T18:00:00+08:00`: after it the
    /// payment order can no longer be paid and reads `CLOSED`.
    pub time_expire: String,
    /// Where WeChat Pay sends the payment notification (https, no query
    /// string).
    pub notify_url: String,
}

/// `trade_state` of a payment order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TradeState {
    /// Paid.
    Success,
    /// Paid, then (partly) refunded.
    Refund,
    /// Not paid yet.
    #[serde(rename = "NOTPAY")]
    NotPay,
    /// Closed: can no longer be paid.
    Closed,
    /// Revoked (payment-code payments).
    Revoked,
    /// The user is paying (e.g. entering a password): outcome unknown.
    #[serde(rename = "USERPAYING")]
    UserPaying,
    /// The payment failed (e.g. bank refused); still payable until closed.
    #[serde(rename = "PAYERROR")]
    PayError,
}

impl TradeState {
    pub const ALL: [TradeState; 7] = [
        Self::Success,
        Self::Refund,
        Self::NotPay,
        Self::Closed,
        Self::Revoked,
        Self::UserPaying,
        Self::PayError,
    ];

    /// The wire name, e.g. `NOTPAY`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Refund => "REFUND",
            Self::NotPay => "NOTPAY",
            Self::Closed => "CLOSED",
            Self::Revoked => "REVOKED",
            Self::UserPaying => "USERPAYING",
            Self::PayError => "PAYERROR",
        }
    }
}

impl fmt::Display for TradeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TradeState {
    type Err = String;

    /// Exact wire names only; anything else is returned as the error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| s.to_owned())
    }
}

/// `amount` of a transaction, in integer fen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub total: Option<i64>,
    pub payer_total: Option<i64>,
    pub currency: Option<String>,
    pub payer_currency: Option<String>,
}

/// `payer` of a transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payer {
    pub openid: Option<String>,
}

/// A transaction as returned by the query API and carried (encrypted) by a
/// payment notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transaction {
    pub trade_state: TradeState,
    pub trade_state_desc: Option<String>,
    pub out_trade_no: Option<String>,
    pub transaction_id: Option<String>,
    pub mchid: Option<String>,
    pub appid: Option<String>,
    pub trade_type: Option<String>,
    pub bank_type: Option<String>,
    pub attach: Option<String>,
    /// RFC 3339, e.g. `2018-06-08T10:34:56+08:00`; kept as sent.
    pub success_time: Option<String>,
    pub payer: Option<Payer>,
    pub amount: Option<Amount>,
}

/// The same, with `trade_state` still a string: the first step of parsing.
#[derive(Debug, Deserialize)]
pub(crate) struct RawTransaction {
    pub trade_state: String,
    #[serde(default)]
    pub trade_state_desc: Option<String>,
    #[serde(default)]
    pub out_trade_no: Option<String>,
    #[serde(default)]
    pub transaction_id: Option<String>,
    #[serde(default)]
    pub mchid: Option<String>,
    #[serde(default)]
    pub appid: Option<String>,
    #[serde(default)]
    pub trade_type: Option<String>,
    #[serde(default)]
    pub bank_type: Option<String>,
    #[serde(default)]
    pub attach: Option<String>,
    #[serde(default)]
    pub success_time: Option<String>,
    #[serde(default)]
    pub payer: Option<Payer>,
    #[serde(default)]
    pub amount: Option<Amount>,
}

impl RawTransaction {
    /// Err carries the unknown `trade_state`.
    pub(crate) fn into_transaction(self) -> Result<Transaction, String> {
        Ok(Transaction {
            trade_state: self.trade_state.parse()?,
            trade_state_desc: self.trade_state_desc,
            out_trade_no: self.out_trade_no,
            transaction_id: self.transaction_id,
            mchid: self.mchid,
            appid: self.appid,
            trade_type: self.trade_type,
            bank_type: self.bank_type,
            attach: self.attach,
            success_time: self.success_time,
            payer: self.payer,
            amount: self.amount,
        })
    }
}

/// Result of a query by `out_trade_no`.
// Returned once per network round trip: boxing would save nothing that
// matters and make every match clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryOutcome {
    Found(Transaction),
    /// 404 `ORDER_NOT_EXIST`: WeChat Pay never saw a prepay order with this
    /// number, so there is nothing to pay and nothing to close there.
    NotFound,
}

/// Result of closing a payment order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAnswer {
    /// 204. Not proof that nothing was paid: query again before acting.
    Closed,
    /// 202 `USER_PAYING`: the user is paying right now; query again later.
    UserPaying,
}

/// A domestic refund of (part of) a paid transaction: what
/// [`crate::Client::refund`] sends, with `currency` `CNY` added.
///
/// `out_refund_no` is the merchant's idempotency key: asking again with the
/// same number never refunds twice, it finds the same refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// WeChat Pay's id of the paid transaction. Not empty.
    pub transaction_id: String,
    /// The merchant's refund number: 1 to 64 of `0-9 a-z A-Z _ - | * @`,
    /// unique per refund.
    pub out_refund_no: String,
    /// Shown to the buyer: at most 80 characters.
    pub reason: String,
    /// Amount to refund in fen: at least 1, at most `total_fen`.
    pub refund_fen: i64,
    /// The transaction's original total in fen.
    pub total_fen: i64,
    /// Where WeChat Pay sends the refund notification (https, no query
    /// string); `None` omits it (the merchant platform's setting applies).
    pub notify_url: Option<String>,
}

/// `status` of a refund (`refund_status` in a refund notification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundState {
    /// The money is back with the buyer.
    Success,
    /// Closed without refunding.
    Closed,
    /// Accepted, not finished yet: query again later.
    Processing,
    /// The money could not reach the buyer (e.g. account closed): a human
    /// decides.
    Abnormal,
}

impl RefundState {
    pub const ALL: [RefundState; 4] = [
        Self::Success,
        Self::Closed,
        Self::Processing,
        Self::Abnormal,
    ];

    /// The wire name, e.g. `PROCESSING`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Closed => "CLOSED",
            Self::Processing => "PROCESSING",
            Self::Abnormal => "ABNORMAL",
        }
    }
}

impl fmt::Display for RefundState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefundState {
    type Err = String;

    /// Exact wire names only; anything else is returned as the error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| s.to_owned())
    }
}

/// A refund as the refund and refund query APIs return it. Amounts are in
/// integer fen, from the answer's `amount.refund` and `amount.total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// WeChat Pay's refund id.
    pub refund_id: Option<String>,
    pub out_refund_no: String,
    pub transaction_id: Option<String>,
    pub out_trade_no: Option<String>,
    pub status: RefundState,
    /// RFC 3339, present once `SUCCESS`; kept as sent.
    pub success_time: Option<String>,
    pub refund_fen: Option<i64>,
    pub total_fen: Option<i64>,
    pub currency: Option<String>,
    /// Where the money went, e.g. `招商银行信用卡0403`.
    pub user_received_account: Option<String>,
}

/// `amount` of a refund answer (the fields we keep).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRefundAmount {
    #[serde(default)]
    pub refund: Option<i64>,
    #[serde(default)]
    pub total: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
}

/// A refund answer with `status` still a string: the first step of parsing.
#[derive(Debug, Deserialize)]
pub(crate) struct RawRefund {
    pub out_refund_no: String,
    pub status: String,
    #[serde(default)]
    pub refund_id: Option<String>,
    #[serde(default)]
    pub transaction_id: Option<String>,
    #[serde(default)]
    pub out_trade_no: Option<String>,
    #[serde(default)]
    pub success_time: Option<String>,
    #[serde(default)]
    pub user_received_account: Option<String>,
    #[serde(default)]
    pub amount: Option<RawRefundAmount>,
}

impl RawRefund {
    /// Err carries the unknown `status`.
    pub(crate) fn into_refund(self) -> Result<Refund, String> {
        let amount = self.amount.unwrap_or_default();
        Ok(Refund {
            status: self.status.parse()?,
            refund_id: self.refund_id,
            out_refund_no: self.out_refund_no,
            transaction_id: self.transaction_id,
            out_trade_no: self.out_trade_no,
            success_time: self.success_time,
            refund_fen: amount.refund,
            total_fen: amount.total,
            currency: amount.currency,
            user_received_account: self.user_received_account,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Transaction, String> {
        serde_json::from_str::<RawTransaction>(json)
            .map_err(|e| e.to_string())?
            .into_transaction()
    }

    #[test]
    fn every_trade_state_parses_and_round_trips() {
        for state in TradeState::ALL {
            let t = parse(&format!(r#"{{"trade_state":"{state}"}}"#)).unwrap();
            assert_eq!(t.trade_state, state);
            assert_eq!(state.as_str().parse::<TradeState>(), Ok(state));
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{state}\"")
            );
        }
        assert_eq!(
            parse(r#"{"trade_state":"NOTPAY"}"#).unwrap().trade_state,
            TradeState::NotPay
        );
        assert_eq!(
            parse(r#"{"trade_state":"USERPAYING"}"#)
                .unwrap()
                .trade_state,
            TradeState::UserPaying
        );
        assert_eq!(
            parse(r#"{"trade_state":"PAYERROR"}"#).unwrap().trade_state,
            TradeState::PayError
        );
    }

    #[test]
    fn unknown_or_miscased_trade_state_is_an_error_not_unpaid() {
        assert_eq!(
            parse(r#"{"trade_state":"REFUNDING"}"#),
            Err("REFUNDING".to_owned())
        );
        assert_eq!(
            parse(r#"{"trade_state":"notpay"}"#),
            Err("notpay".to_owned())
        );
        assert_eq!(parse(r#"{"trade_state":""}"#), Err(String::new()));
    }

    #[test]
    fn trade_state_is_required() {
        let err = parse(r#"{"out_trade_no":"1217752501201407033233368018"}"#).unwrap_err();
        assert!(err.contains("trade_state"), "{err}");
    }

    #[test]
    fn real_looking_success_payload() {
        // Shape of the official documentation's example response.
        let json = r#"{
            "amount": {"currency": "CNY", "payer_currency": "CNY", "payer_total": 1, "total": 1},
            "appid": "wxdace645e0bc2cXXX",
            "attach": "",
            "bank_type": "OTHERS",
            "mchid": "1900006XXX",
            "out_trade_no": "44_2126281063_5504",
            "payer": {"openid": "o4GgauJP_mgWEWictzA15WT15XXX"},
            "promotion_detail": [],
            "success_time": "2021-03-22T10:29:05+08:00",
            "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功",
            "trade_type": "JSAPI",
            "transaction_id": "4200000891202103228088184743"
        }"#;
        let t = parse(json).unwrap();
        assert_eq!(t.trade_state, TradeState::Success);
        assert_eq!(
            t.transaction_id.as_deref(),
            Some("4200000891202103228088184743")
        );
        assert_eq!(t.success_time.as_deref(), Some("2021-03-22T10:29:05+08:00"));
        assert_eq!(t.out_trade_no.as_deref(), Some("44_2126281063_5504"));
        assert_eq!(t.trade_state_desc.as_deref(), Some("支付成功"));
        let amount = t.amount.unwrap();
        assert_eq!((amount.total, amount.payer_total), (Some(1), Some(1)));
        assert_eq!(
            t.payer.unwrap().openid.as_deref(),
            Some("o4GgauJP_mgWEWictzA15WT15XXX")
        );
    }

    #[test]
    fn real_looking_notpay_payload_without_payment_fields() {
        let json = r#"{"amount":{"payer_currency":"CNY","total":100},"appid":"wx1","mchid":"1230000109",
            "out_trade_no":"ORD20240101000001","promotion_detail":[],"scene_info":{"device_id":""},
            "trade_state":"NOTPAY","trade_state_desc":"订单未支付"}"#;
        let t = parse(json).unwrap();
        assert_eq!(t.trade_state, TradeState::NotPay);
        assert_eq!(t.transaction_id, None);
        assert_eq!(t.success_time, None);
        assert_eq!(t.amount.unwrap().total, Some(100));
    }

    #[test]
    fn nulls_count_as_absent() {
        let t = parse(r#"{"trade_state":"CLOSED","transaction_id":null,"amount":null}"#).unwrap();
        assert_eq!(t.trade_state, TradeState::Closed);
        assert_eq!(t.amount, None);
    }
}

#[cfg(test)]
mod refund_tests {
    use super::*;

    fn parse(json: &str) -> Result<Refund, String> {
        serde_json::from_str::<RawRefund>(json)
            .map_err(|e| e.to_string())?
            .into_refund()
    }

    #[test]
    fn every_refund_status_parses_and_round_trips() {
        for status in RefundState::ALL {
            let r = parse(&format!(r#"{{"out_refund_no":"R1","status":"{status}"}}"#)).unwrap();
            assert_eq!(r.status, status);
            assert_eq!(status.as_str().parse::<RefundState>(), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        assert_eq!("ABNORMAL".parse(), Ok(RefundState::Abnormal));
    }

    #[test]
    fn unknown_or_miscased_refund_status_is_an_error_not_a_guess() {
        for bad in ["REFUNDCLOSE", "success", "", "SUCCESS "] {
            assert_eq!(bad.parse::<RefundState>(), Err(bad.to_owned()));
            let json = serde_json::json!({"out_refund_no": "R1", "status": bad}).to_string();
            assert_eq!(parse(&json), Err(bad.to_owned()));
        }
    }

    #[test]
    fn out_refund_no_and_status_are_required() {
        let err = parse(r#"{"out_refund_no":"R1"}"#).unwrap_err();
        assert!(err.contains("status"), "{err}");
        let err = parse(r#"{"status":"SUCCESS"}"#).unwrap_err();
        assert!(err.contains("out_refund_no"), "{err}");
    }

    #[test]
    fn real_looking_refund_answer() {
        // Shape of the official documentation's example response.
        let json = r#"{
            "refund_id": "50000000382019052709732678859",
            "out_refund_no": "1217752501201407033233368018",
            "transaction_id": "1217752501201407033233368018",
            "out_trade_no": "1217752501201407033233368018",
            "channel": "ORIGINAL",
            "user_received_account": "招商银行信用卡0403",
            "success_time": "2020-12-01T16:18:12+08:00",
            "create_time": "2020-12-01T16:18:12+08:00",
            "status": "SUCCESS",
            "funds_account": "UNSETTLED",
            "amount": {
                "total": 100, "refund": 100,
                "from": [{"account": "AVAILABLE", "amount": 444}],
                "payer_total": 90, "payer_refund": 90,
                "settlement_refund": 100, "settlement_total": 100,
                "discount_refund": 10, "currency": "CNY", "refund_fee": 0
            },
            "promotion_detail": []
        }"#;
        let r = parse(json).unwrap();
        assert_eq!(
            r,
            Refund {
                refund_id: Some("50000000382019052709732678859".into()),
                out_refund_no: "1217752501201407033233368018".into(),
                transaction_id: Some("1217752501201407033233368018".into()),
                out_trade_no: Some("1217752501201407033233368018".into()),
                status: RefundState::Success,
                success_time: Some("2020-12-01T16:18:12+08:00".into()),
                refund_fen: Some(100),
                total_fen: Some(100),
                currency: Some("CNY".into()),
                user_received_account: Some("招商银行信用卡0403".into()),
            }
        );
    }

    #[test]
    fn a_processing_refund_without_optional_fields() {
        let r = parse(
            r#"{"out_refund_no":"R1","status":"PROCESSING","amount":null,"success_time":null}"#,
        )
        .unwrap();
        assert_eq!(r.status, RefundState::Processing);
        assert_eq!((r.refund_fen, r.total_fen, r.currency), (None, None, None));
        assert_eq!(r.success_time, None);
    }
}
