#!/usr/bin/env bash
# Scale benchmark (not a test): N pending delay messages (default 1,000,000)
# on classic queues (the local broker) and on quorum queues (the three-node
# cluster of scripts/cluster.sh, on this machine): the relay's publish rate,
# broker memory per million pending, the rate at which they dead-letter
# when they expire one after the other at the pace they were published (a
# TTL longer than the publishing: --ttl-seconds, default 300; RabbitMQ fixes
# a message's expiry when it is enqueued), and the worker's drain rate.
# Dead-lettering with no progress for 2 minutes is reported as stalled.
# Prints a table; needs root (rabbitmqctl, the cluster), about 8 GB of free
# memory for a million, and half an hour.
# Usage: scripts/bench-scale.sh [--orders N] [--drain-seconds S] [--ttl-seconds T]
#                               [--only-classic | --only-quorum]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-env.sh
cargo build --quiet --release -p order-timeout-worker
export BENCH_WORKER_BIN="$(release_bin order-timeout-worker)"
cargo run --quiet --release -p order-timeout-worker --example bench_scale -- "$@"
