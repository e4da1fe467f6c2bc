//! Integration tests of the simulator: its admin API, what it demands of
//! requests, what it signs, Native prepay, payment notifications, refunds,
//! trade bills, the listener, and the binary.

mod admin;
mod bills;
mod binary;
mod notifications;
mod prepay;
mod protocol;
mod refunds;
mod support;
mod transport;
