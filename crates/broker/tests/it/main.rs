//! The broker crate against the real RabbitMQ, one vhost per test.

mod publish;
mod topology;
