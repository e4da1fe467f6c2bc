//! Integration tests of the simulator: its admin API, what it demands of
//! requests, what it signs, and the binary.

mod admin;
mod binary;
mod protocol;
mod support;
