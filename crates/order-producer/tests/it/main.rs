//! The `order-producer` binary as a user runs it, against the real
//! PostgreSQL (one fresh database per test).

mod cli;
