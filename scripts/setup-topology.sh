#!/usr/bin/env bash
# Declares the RabbitMQ topology of order-timeout (the operator's way; safe
# to run again: declaring twice changes nothing). Configured by the same
# environment variables as the binaries:
#
#   AMQP_URL        default amqp://guest:guest@127.0.0.1:5672/%2f
#   DELAY_TTL_MS    payment window of queue.ordercreate in ms (default 1800000)
#   DELAY_WINDOWS   one delay queue per window instead, e.g. 15m,30m
#   QUEUE_TYPE      classic (default) or quorum (RabbitMQ cluster)
#   RETRY_DELAYS    the worker's retry ladder (default 5s,30s,2m,10m)
#
# Uses $ORDER_PRODUCER, else order-producer on PATH, else this checkout's
# release build (built if missing). Exit code 2 when the broker holds the
# topology with other arguments: the message says what differs and how to
# migrate.
set -euo pipefail

bin="${ORDER_PRODUCER:-}"
if [ -z "$bin" ]; then
    if command -v order-producer >/dev/null; then
        bin="$(command -v order-producer)"
    else
        root="$(cd "$(dirname "$0")/.." && pwd)"
        target_dir="${CARGO_TARGET_DIR:-target}"
        case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
        bin="$target_dir/release/order-producer"
        if [ ! -x "$bin" ]; then
            echo "setup-topology: building order-producer (release)" >&2
            cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p order-producer
        fi
    fi
fi

exec "$bin" declare "$@"
