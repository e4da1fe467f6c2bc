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

#[path = "../support/mod.rs"]
mod support;

pub(crate) use support::{stderr, stdout, Env, KillOnDrop};
