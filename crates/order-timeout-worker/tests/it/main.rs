//! The worker end to end: real PostgreSQL (a database per test), real
//! RabbitMQ (a vhost per test), the WeChat Pay simulator in-process, delay
//! windows of a few hundred milliseconds.

mod binary;
mod branches;
mod configuration;
mod deadlines;
mod delivery;
mod edges;
mod failover;
mod faults;
mod front_door;
mod logs;
mod metrics;
mod money;
mod poison;
mod rechecks;
mod reconcile;
mod refunds;
mod round_trips;
mod secrets;
mod sweep;
mod topology;

#[path = "../support/mod.rs"]
mod support;

pub(crate) use support::{Stack, WINDOW};
