#!/usr/bin/env bash
# Worker benchmark (not a test): orders settled per second for N orders
# expiring together (60% never created at WeChat Pay, 30% NOTPAY, 10% paid)
# at simulator latency 0 and 50 ms, the worker's peak RSS, and the lag
# between deadline and settlement at a steady 100 orders/s. Everything runs
# on this machine: PostgreSQL, RabbitMQ, the simulator (in the bench
# process), the release worker binary. Needs rabbitmqctl (root).
# Usage: scripts/bench.sh [--orders N] [--lag-seconds S] [--metrics-orders N]
#        [--metrics-pairs P] [--only-metrics]
# The last part runs the throughput scenario with metrics off and on,
# alternated, and prints the cost of metrics side by side (orders/s and the
# worker's CPU per order).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/dev-env.sh
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
trap scripts/drop-test-templates.sh EXIT
cargo build --quiet --release -p order-timeout-worker
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
export BENCH_WORKER_BIN="$target_dir/release/order-timeout-worker"
cargo run --quiet --release -p order-timeout-worker --example bench_worker -- "$@"
