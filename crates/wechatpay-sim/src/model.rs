//! The simulator's data: orders and refunds as WeChat Pay would hold them,
//! the faults to inject (trade bill faults apart), and request and
//! notification counters. Shared by the server and the admin client
//! (they are the admin API's JSON bodies).

use serde::{Deserialize, Serialize};

/// One payment order. `trade_state` is a free string so tests can make the
/// simulator report states the client does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Order {
    pub trade_state: String,
    /// Fen.
    pub amount_total: i64,
    pub payer_total: Option<i64>,
    pub transaction_id: Option<String>,
    /// RFC 3339 (any string: tests send garbage on purpose).
    pub success_time: Option<String>,
    /// `amount.currency` of answers (`CNY` unless a test says otherwise).
    pub currency: String,
    /// Answer without any `amount` object.
    pub omit_amount: bool,
    /// Faults for requests about this order (refunds of it included); they
    /// win over the global ones.
    pub faults: Option<Faults>,
    /// `appid` of the prepay call (answers name a fixed test appid, or
    /// `SimConfig::appid`, when absent).
    pub appid: Option<String>,
    /// `description` of the prepay call.
    pub description: Option<String>,
    /// `attach` of answers and of the trade bill's 商户数据包 (empty when
    /// absent).
    pub attach: Option<String>,
    /// Where the payment notification goes when the order is paid (none is
    /// sent when absent).
    pub notify_url: Option<String>,
    /// RFC 3339; once passed, a `NOTPAY` or `USERPAYING` order reads
    /// `CLOSED` and can no longer be paid.
    pub time_expire: Option<String>,
    /// `weixin://wxpay/bizpayurl?pr=...` handed out by the Native prepay
    /// call; present once the order was prepaid.
    pub code_url: Option<String>,
    /// Never send this order's payment notification (counted as dropped).
    pub drop_notification: bool,
    /// Read-only counters, filled in by the simulator.
    pub queries: u64,
    pub closes: u64,
    pub prepays: u64,
    /// Delivery attempts of this order's payment notification.
    pub notify_attempts: u64,
    /// Whether a notification receiver answered 2xx.
    pub notify_delivered: bool,
}

impl Default for Order {
    fn default() -> Self {
        Self {
            trade_state: "NOTPAY".to_owned(),
            amount_total: 100,
            payer_total: None,
            transaction_id: None,
            success_time: None,
            currency: "CNY".to_owned(),
            omit_amount: false,
            faults: None,
            appid: None,
            description: None,
            attach: None,
            notify_url: None,
            time_expire: None,
            code_url: None,
            drop_notification: false,
            queries: 0,
            closes: 0,
            prepays: 0,
            notify_attempts: 0,
            notify_delivered: false,
        }
    }
}

impl Order {
    /// An order in `trade_state` with the default amount.
    #[must_use]
    pub fn in_state(trade_state: &str) -> Self {
        Self {
            trade_state: trade_state.to_owned(),
            ..Self::default()
        }
    }

    /// Whether `time_expire` is set, parses, and lies in the past.
    #[must_use]
    pub fn time_expire_passed(&self) -> bool {
        self.time_expire
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t <= chrono::Utc::now())
    }

    /// What WeChat Pay does at `time_expire`: an unpaid order closes. Applied
    /// lazily wherever an order is read; `true` when it closed just now.
    pub(crate) fn apply_time_expire(&mut self) -> bool {
        let unpaid = matches!(self.trade_state.as_str(), "NOTPAY" | "USERPAYING");
        if unpaid && self.time_expire_passed() {
            "CLOSED".clone_into(&mut self.trade_state);
            true
        } else {
            false
        }
    }
}

/// Which API a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Query,
    Close,
    /// `POST /v3/pay/transactions/native`.
    Prepay,
    /// `POST /v3/refund/domestic/refunds`.
    Refund,
    /// `GET /v3/refund/domestic/refunds/{out_refund_no}`.
    RefundQuery,
    /// `GET /v3/bill/tradebill`.
    TradeBill,
    /// `GET /v3/billdownload/file`.
    BillDownload,
}

/// One domestic refund as the simulator holds it (the admin API's answer
/// about refunds). Created by the refund API, or recorded directly by the
/// admin API (a refund made by hand in the merchant platform); the admin
/// API can force its `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimRefund {
    pub out_refund_no: String,
    /// `50` and 28 digits.
    pub refund_id: String,
    pub transaction_id: String,
    pub out_trade_no: String,
    /// The merchant that asked for the refund (named in its notification).
    pub mchid: String,
    pub reason: Option<String>,
    /// Where the refund notification goes when the refund becomes final
    /// (none is sent when absent).
    pub notify_url: Option<String>,
    /// `PROCESSING`, then `SUCCESS`, `ABNORMAL` or `CLOSED`.
    pub status: String,
    /// Fen refunded.
    pub refund: i64,
    /// Fen: the order's total.
    pub total: i64,
    /// Fen the payer paid for the order.
    pub payer_total: i64,
    pub currency: String,
    /// RFC 3339, China Standard Time.
    pub create_time: String,
    /// RFC 3339, China Standard Time; only while `SUCCESS`.
    pub success_time: Option<String>,
    /// The final status this refund takes instead of the global refund
    /// outcome (`PUT /sim/refunds/{out_refund_no}` `{"outcome": ...}`).
    pub outcome: Option<String>,
    /// Read-only counters, filled in by the simulator: refund requests
    /// naming this `out_refund_no` (the first and its repeats), queries.
    pub requests: u64,
    pub queries: u64,
    /// Delivery attempts of this refund's notifications.
    pub notify_attempts: u64,
    /// Whether a notification receiver answered 2xx.
    pub notify_delivered: bool,
}

/// Faults to inject into API answers (never into the admin API).
// Independent switches, one per kind of fault: a bitflag set would only
// make the admin JSON harder to write.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Sleep this long before answering.
    pub latency_ms: u64,
    /// Answer with this HTTP status and a matching WeChat Pay error body
    /// instead of the real answer (429 `FREQUENCY_LIMITED`, 500
    /// `SYSTEM_ERROR`, 503 `SERVICE_UNAVAILABLE`, 403 `NO_AUTH`, ...).
    pub status: Option<u16>,
    /// `Retry-After` seconds sent with a 429.
    pub retry_after_secs: Option<u64>,
    /// Sign, then corrupt the signature.
    pub tamper_signature: bool,
    /// Sign with a timestamp 10 minutes in the past.
    pub stale_timestamp: bool,
    /// Sign with the right key but name a serial nobody knows.
    pub unknown_serial: bool,
    /// Send no signature headers at all (like a proxy's error page).
    pub unsigned: bool,
    /// Close answers 204 but leaves the order as it was.
    pub close_noop: bool,
    /// The query answer names this `out_trade_no` instead of the one asked
    /// about (an answer about another order).
    pub answer_out_trade_no: Option<String>,
    /// The query answer names this `mchid` instead of the signer's.
    pub answer_mchid: Option<String>,
    /// The query answer has no `out_trade_no` field.
    pub omit_out_trade_no: bool,
    /// The query answer has no `mchid` field.
    pub omit_mchid: bool,
    /// Instead of answering, send again, byte for byte and with its
    /// original signature headers, the last signed answer given about this
    /// `out_trade_no` (or, for the refund endpoints, this `out_refund_no`):
    /// a replayed answer.
    pub replay_answer_of: Option<String>,
    /// Only for this endpoint (every endpoint when absent).
    pub only: Option<Endpoint>,
    /// Only for the next N matching requests, then the faults clear
    /// themselves (forever when absent).
    pub times: Option<u32>,
}

/// Faults of the trade bill endpoints (`PUT /sim/bill/faults`), cleared
/// by a reset.
// Independent switches, as in `Faults`.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BillFaults {
    /// The next N tradebill requests answer 400 `STATEMENT_CREATING`
    /// (counts down).
    pub statement_creating: u32,
    /// `hash_value` names another text (the file is intact).
    pub wrong_hash: bool,
    /// The download serves only the first half of the gzip bytes.
    pub truncate_gzip: bool,
    /// The summary's 应结订单总金额 is 1 fen more than the rows' sum
    /// (`hash_value` matches this text).
    pub summary_disagrees: bool,
    /// Download links are expired from the start (400 `INVALID_REQUEST`).
    pub expire_links: bool,
}

/// Counters since start (or the last reset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Every request to `/v3/...`.
    pub api_requests: u64,
    pub queries: u64,
    pub closes: u64,
    /// Native prepay calls not answered by an injected fault status.
    pub prepays: u64,
    /// Refund requests (`POST /v3/refund/domestic/refunds`) that passed
    /// the header and signature checks, including those answered by an
    /// injected fault and repeats of an earlier `out_refund_no`.
    pub refund_requests: u64,
    /// Distinct refunds created.
    pub refunds_created: u64,
    /// Refund queries that passed the header and signature checks,
    /// including those answered by an injected fault.
    pub refund_queries: u64,
    /// Trade bill requests (`GET /v3/bill/tradebill`) that passed the
    /// header and signature checks, including those answered by an
    /// injected fault.
    pub trade_bills: u64,
    /// Bill downloads (`GET /v3/billdownload/file`) that passed the header
    /// and signature checks, including those answered by an injected fault
    /// or refused for their token.
    pub bill_downloads: u64,
    /// Requests refused with 401 `SIGN_ERROR`.
    pub bad_signatures: u64,
    /// Requests refused with 400 `INVALID_REQUEST` (missing headers).
    pub invalid_requests: u64,
    /// Answers replaced by an injected fault status.
    pub faults_injected: u64,
    /// Payment and refund notification delivery attempts (first sends and
    /// retries).
    pub notifications_sent: u64,
    /// Notifications a receiver answered with 2xx.
    pub notifications_delivered: u64,
    /// Attempts that failed (non-2xx, connection error or timeout).
    pub notifications_failed: u64,
    /// Notifications never sent because a drop switch was on.
    pub notifications_dropped: u64,
}
