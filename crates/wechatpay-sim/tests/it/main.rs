//! Integration tests of the simulator: its admin API, what it demands of
//! requests, what it signs, Native prepay, payment notifications, and the
//! binary.

mod admin;
mod binary;
mod notifications;
mod prepay;
mod protocol;
mod support;
