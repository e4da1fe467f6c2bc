//! Integration tests of the client against the simulator over real HTTP.
//!
//! Every test starts its own in-process simulator on `127.0.0.1:0`; the key
//! pairs are generated once per test binary. Logs only with `TEST_LOG=1`.

mod support;

mod bill;
mod config;
mod faults;
mod flows;
mod notify;
mod prepay;
mod refund;
mod verification;
