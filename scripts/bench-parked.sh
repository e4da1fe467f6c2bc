#!/usr/bin/env bash
# Benchmark of `order-producer parked --replay` (not a test): N valid
# messages parked straight into queue.ordertimeout.parked (with the
# worker's park headers) in a vhost of their own, then the release binary
# replays them; prints messages/s beside this machine's RSA-2048 signature
# rate, and checks that every message arrived in queue.ordertimeout exactly
# once and the parking queue is empty. Needs local RabbitMQ and rabbitmqctl
# (root). Usage: scripts/bench-parked.sh [--messages N] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-env.sh
cargo build --quiet --release -p order-producer
export BENCH_PRODUCER_BIN="$(release_bin order-producer)"
cargo run --quiet --release -p order-producer --example bench_parked -- "$@"
