#!/usr/bin/env bash
# Benchmark of the WeChat Pay client's CPU hot spot (not a test):
# RSA-2048 signatures/s and verifications/s on one thread, and query+close
# round trips/s against the in-process simulator. Prints medians of several
# runs. Usage: scripts/bench-signing.sh [--runs N] [--seconds S]
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --release -p payment-client --example bench -- "$@"
