//! The `order-producer` binary as a user runs it, against the real
//! PostgreSQL and RabbitMQ (a fresh database and vhost per test).

mod cases;
mod cli;
mod declare;
mod metrics;
mod notify;
mod openapi;
mod parked;
mod relay;
mod serve_binary;
mod shop;

pub(crate) use order_producer::testing::{stderr, stdout, Env, KillOnDrop};

/// A database, a vhost and this crate's binary for one test.
pub(crate) fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_order-producer"))
}
