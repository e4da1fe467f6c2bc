#!/usr/bin/env bash
# Worker benchmark (not a test): orders settled per second for N orders
# expiring together (60% never created at WeChat Pay, 30% NOTPAY, 10% paid)
# at simulator latency 0 and 50 ms, the worker's peak RSS, where the CPU goes
# per settled order (worker, PostgreSQL, RabbitMQ, the simulator, from /proc),
# the worker's crypto share, PostgreSQL against a pgbench baseline of the
# same writes, the lane bound at 50 ms, and the lag between deadline and
# settlement at a steady 100 orders/s; then a table of the targets, met or
# not. Markdown tables, fit for docs/benchmarks.md. Everything runs on this machine:
# PostgreSQL, RabbitMQ, the simulator (in the bench process), the release
# worker binary, pgbench. Needs rabbitmqctl (root) and pgbench
# (postgresql-client; or PGBENCH=/path/to/pgbench).
# Usage: scripts/bench.sh [--orders N] [--scenarios 0/16,0/64,50/64]
#        [--pgbench-transactions N] [--lag-seconds S] [--metrics-orders N]
#        [--metrics-pairs P] [--only-cost | --only-metrics | --skip-metrics]
# --scenarios picks the throughput scenarios, simulator latency ms / worker
# --worker-concurrency. --only-cost runs the pgbench baseline, the throughput and
# cost scenarios and the targets only (e.g. scripts/bench.sh --orders 3000
# --only-cost). The metrics part runs the throughput scenario with metrics
# off and on, alternated, and prints the cost of metrics side by side
# (orders/s and the worker's CPU per order); --only-metrics runs it alone,
# --skip-metrics leaves it out. The worker binary is the one built here
# unless BENCH_WORKER_BIN names another (e.g. an older build, for a
# before/after table).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v "${PGBENCH:-pgbench}" >/dev/null 2>&1; then
    echo "bench: pgbench not found: install it (apt-get install postgresql-client-15) or set PGBENCH" >&2
    exit 1
fi
. scripts/bench-env.sh
cargo build --quiet --release -p order-timeout-worker
export BENCH_WORKER_BIN="${BENCH_WORKER_BIN:-$(release_bin order-timeout-worker)}"
cargo run --quiet --release -p order-timeout-worker --example bench_worker -- "$@"
