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
scripts/dev-env.sh
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
trap scripts/drop-test-templates.sh EXIT
cargo build --quiet --release -p order-producer
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
export BENCH_PRODUCER_BIN="$target_dir/release/order-producer"
cargo run --quiet --release -p order-producer --example bench_front_door -- "$@"
