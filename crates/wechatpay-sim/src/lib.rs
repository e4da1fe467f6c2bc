//! A local stand-in for the WeChat Pay APIv3 endpoints order-timeout uses
//! (Native prepay, query and close by `out_trade_no`, domestic refunds and
//! their query) and for the payment and refund notifications WeChat Pay
//! sends, for tests, the demo and local development.
//!
//! It behaves like the real API where our code can tell the difference: it
//! verifies request signatures with the merchant public key (401
//! `SIGN_ERROR`), demands `Accept` and `User-Agent` (400 `INVALID_REQUEST`),
//! and signs every response in WeChat Pay public key mode with its own key.
//! Orders live in memory and are driven through an admin HTTP API under
//! `/sim/` (see [`AdminClient`]), which can also inject faults: latency, 429,
//! 5xx, tampered or stale signatures, unknown serials, a close that answers
//! 204 but leaves the order payable, and spoilt trade bills.
//!
//! When an order with a `notify_url` is paid, a small pool of sender threads
//! POSTs the signed, AES-256-GCM encrypted `TRANSACTION.SUCCESS` notification
//! to it and retries on WeChat Pay's schedule (shortened by default) until a
//! receiver answers 2xx. [`signed_notification`] builds the same requests for
//! tests that craft their own.
//!
//! A refund answers `PROCESSING` and becomes final `SimConfig::refund_delay`
//! later (`SUCCESS` unless the admin API asks for `ABNORMAL` or `CLOSED`);
//! then its `REFUND.*` notification goes out the same way
//! ([`signed_refund_notification`]). The same `out_refund_no` again answers
//! the same refund and never refunds twice.
//!
//! It serves the daily trade bill of type `ALL` (`GET /v3/bill/tradebill`,
//! then the unsigned gzip file from `/v3/billdownload/file`), rendered from
//! its orders and refunds, today's partial bill included: a convenience of
//! the simulator, so that a demo can reconcile its own day (WeChat Pay has
//! yesterday's bill from 10:00 on). [`BillFaults`] spoil it for tests.
//!
//! It is embeddable: [`Simulator::start`] binds `127.0.0.1:0` and returns a
//! handle with the bound address, so integration tests of other crates run it
//! in-process. Its signing and verification are written independently of the
//! `payment-client` crate on purpose: a shared bug in the message format would
//! otherwise pass every test.
//!
//! Production code never falls back to it: it is reached only by configuring
//! its URL and keys.

mod admin;
mod admin_api;
mod api;
mod auth;
mod bill;
pub mod cli;
mod http;
mod keys;
mod model;
mod notify;
mod refund;
mod server;
mod signing;
mod tradebill;

use std::time::Duration;

pub use admin::{AdminClient, AdminError};
pub use keys::{signature_rate, ApiV3Key, ClientFiles, KeyError, SimKeys, APIV3_KEY_FILE};
pub use model::{BillFaults, Endpoint, Faults, Order, SimRefund, Stats};
pub use notify::{
    encrypt_resource, signed_notification, signed_refund_notification, SignedNotification,
};
pub use server::{SimConfig, SimError, Simulator};

/// Merchant id the simulator expects unless told otherwise.
pub const DEFAULT_MCHID: &str = "1900000001";
/// Merchant certificate serial the simulator expects unless told otherwise.
pub const DEFAULT_MERCHANT_SERIAL_NO: &str = "3775B6A45ACD588826D15E583A95F5DD2A0D6A4B";
/// Public key id the simulator signs its responses with unless told otherwise.
pub const DEFAULT_PUBLIC_KEY_ID: &str = "PUB_KEY_ID_0119000000012025112600000000000001";
/// APIv3 key (32 bytes) the simulator encrypts notifications with unless
/// told otherwise. A test value: never a real merchant's.
pub const DEFAULT_APIV3_KEY: &str = "SimulatorApiV3Key000000000000000";

/// WeChat Pay's notification retry schedule: the waits before the 2nd, 3rd,
/// ... delivery attempt after a failed one (15 s, 15 s, 30 s, 3 min, 10 min,
/// 20 min, 30 min, 30 min, 30 min, 60 min, 3 h, 3 h, 3 h, 6 h, 6 h). The
/// simulator's default, [`SimConfig::notify_schedule`], is this divided by 100.
pub const WECHATPAY_NOTIFY_SCHEDULE: [Duration; 15] = [
    Duration::from_secs(15),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_mins(3),
    Duration::from_mins(10),
    Duration::from_mins(20),
    Duration::from_mins(30),
    Duration::from_mins(30),
    Duration::from_mins(30),
    Duration::from_hours(1),
    Duration::from_hours(3),
    Duration::from_hours(3),
    Duration::from_hours(3),
    Duration::from_hours(6),
    Duration::from_hours(6),
];
