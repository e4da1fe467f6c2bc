#!/usr/bin/env bash
# Front door benchmark (not a test): `POST /v1/orders` and WeChat Pay
# payment notifications per second through the release `order-producer
# serve`, 32 client threads, p50/p99 latency and serve's CPU per request,
# beside the per-process `create-order` rate and this machine's RSA-2048
# signature rate in the same run. Fresh database per run (like the tests);
# needs local PostgreSQL and RabbitMQ.
# Usage: scripts/bench-front-door.sh [--orders N] [--clients N] [--create-order-runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-env.sh
cargo build --quiet --release -p order-producer
export BENCH_PRODUCER_BIN="$(release_bin order-producer)"
cargo run --quiet --release -p order-producer --example bench_front_door -- "$@"
