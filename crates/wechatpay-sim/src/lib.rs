//! A local stand-in for the two WeChat Pay APIv3 endpoints the order-timeout
//! worker uses (query and close by `out_trade_no`), for tests, the demo and
//! local development.
//!
//! It behaves like the real API where our code can tell the difference: it
//! verifies request signatures with the merchant public key (401
//! `SIGN_ERROR`), demands `Accept` and `User-Agent` (400 `INVALID_REQUEST`),
//! and signs every response in WeChat Pay public key mode with its own key.
//! Orders live in memory and are driven through an admin HTTP API under
//! `/sim/` (see [`AdminClient`]), which can also inject faults: latency, 429,
//! 5xx, tampered or stale signatures, unknown serials, and a close that answers
//! 204 but leaves the order payable.
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
mod http;
mod keys;
mod model;
mod server;
mod signing;

pub use admin::{AdminClient, AdminError};
pub use keys::{ClientFiles, KeyError, SimKeys};
pub use model::{Endpoint, Faults, Order, Stats};
pub use server::{SimConfig, SimError, Simulator};

/// Merchant id the simulator expects unless told otherwise.
pub const DEFAULT_MCHID: &str = "1900000001";
/// Merchant certificate serial the simulator expects unless told otherwise.
pub const DEFAULT_MERCHANT_SERIAL_NO: &str = "3775B6A45ACD588826D15E583A95F5DD2A0D6A4B";
/// Public key id the simulator signs its responses with unless told otherwise.
pub const DEFAULT_PUBLIC_KEY_ID: &str = "PUB_KEY_ID_0119000000012025112600000000000001";
