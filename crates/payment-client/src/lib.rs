//! WeChat Pay APIv3 client for the calls order-timeout needs: create a
//! native (QR code) payment order ([`Client::native_prepay`]), query a
//! payment order by `out_trade_no` and close it, refund a paid transaction
//! and query the refund ([`Client::refund`], [`Client::query_refund`]);
//! fetch a day's trade bill, checked and parsed for reconciliation
//! ([`Client::trade_bill`], [`parse_bill`]); and the receiving side of
//! payment and refund notifications ([`notify`]).
//!
//! What it guarantees, so that callers can act on its answers:
//!
//! * every request is signed (SHA256withRSA, PKCS#1 v1.5) over the exact bytes
//!   sent, with a fresh nonce and the current time ([`signing`]);
//! * every response, 204s and error bodies included, is verified against a
//!   WeChat Pay key chosen by `Wechatpay-Serial` before anything in it is
//!   believed ([`verify`]); an unverifiable response is a transient
//!   [`Error::Unverified`], never an outcome;
//! * errors are typed and classified ([`Error::is_transient`]): retry later
//!   versus give up and tell a human;
//! * an unknown `trade_state` is an error ([`Error::UnknownTradeState`]), never
//!   "unpaid"; likewise an unknown refund `status`
//!   ([`Error::UnknownRefundStatus`]);
//! * an answer about another order or refund than the one asked about is
//!   [`Error::UnexpectedResponse`], never an outcome;
//! * a trade bill is used only whole: its file's SHA1 must be the one the
//!   verified answer named, and every line must parse and agree with the
//!   summary ([`BillError`]);
//! * a payment or refund notification is believed only after its signature verified
//!   with the same trusted keys as an answer, and its resource decrypted
//!   with the APIv3 key ([`notify::NotificationVerifier`]).
//!
//! It never talks to the database and never reads the environment: the
//! binaries fill a [`Config`] from flags and environment variables and call
//! [`Client::new`], which loads the keys and fails with a message naming the
//! offending file. Nothing here knows about the simulator; it is reached only
//! by configuring its URL and keys.

mod bill;
mod client;
mod config;
mod error;
mod model;
pub mod notify;
mod observe;
pub mod resolve;
pub mod signing;
pub mod verify;

pub use bill::{parse_bill, Bill, BillError, BillRefund, BillRow, BillSummary, TradeBill};
pub use client::{validate_out_refund_no, validate_out_trade_no, Client, USER_AGENT};
pub use config::{
    Config, ConfigError, PlatformCertificateConfig, ProxyUrl, PublicKeyConfig, BACKUP_BASE_URL,
    DEFAULT_BASE_URL, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT,
};
pub use error::Error;
pub use model::{
    Amount, CloseAnswer, NativePrepay, Payer, QueryOutcome, Refund, RefundRequest, RefundState,
    TradeState, Transaction,
};
pub use notify::{ApiV3Key, Notification, NotificationVerifier, NotifyError, RefundNotice};
pub use observe::{Call, CallObserver, CallResult};
