#!/usr/bin/env bash
# Benchmark of the outbox relay (not a test): outbox rows -> published,
# confirmed by RabbitMQ and marked, per second; and a bare confirmed
# publisher on the same messages for comparison. Uses a fresh database and
# vhost per run (like the tests), so it needs local PostgreSQL and RabbitMQ
# and rabbitmqctl (root). Usage: scripts/bench-relay.sh [--messages N] [--runs N] [--batch-size N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-env.sh
cargo run --quiet --release -p order-producer --example bench_relay -- "$@"
