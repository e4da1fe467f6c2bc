#!/usr/bin/env bash
# The benchmarks (not tests), one entry point: scripts/bench.sh NAME [ARGS...].
# `scripts/bench.sh --help` lists the names. Each is a binary of the `bench`
# crate (crates/bench/src/bin/NAME), run in release mode, except reconcile,
# which drives the release binaries from here. What each measures, its
# arguments and what it needs are written above its function below; the
# figures and how to read them are in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
usage: scripts/bench.sh NAME [ARGS...]

  worker      orders settled per second, where the CPU goes, lag and the cost of metrics (the worker)
  front-door  POST /v1/orders and payment notifications per second through `order-producer serve`
  parked      messages per second replayed by `order-producer parked --replay`
  reconcile   rows per second reconciled by `order-timeout-worker reconcile`
  relay       outbox rows published, confirmed and marked per second by the relay
  scale       a million pending delay messages: publish, broker memory, expiry and drain rates
  signing     RSA-2048 signatures and verifications per second, WeChat Pay round trips per second

Arguments are the benchmark's own; see the comments in scripts/bench.sh and
docs/benchmarks.md.
EOF
}

# Makes the services reachable, points the benchmark's databases at
# TEST_DATABASE_URL (default: the local server) and drops the test templates
# on exit.
bench_env() {
    scripts/dev-env.sh
    export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
    trap scripts/drop-test-templates.sh EXIT
}

# The absolute path of a release binary of this workspace (CARGO_TARGET_DIR
# honoured), for the benchmarks that run one as a child process.
release_bin() {
    local target_dir="${CARGO_TARGET_DIR:-target}"
    case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
    echo "$target_dir/release/$1"
}

# Runs the bench crate's binary NAME in release mode with ARGS.
run_bench() {
    local name="$1"
    shift
    cargo run --quiet --release -p bench --bin "$name" -- "$@"
}

# Worker benchmark: orders settled per second for N orders expiring together
# (60% never created at WeChat Pay, 30% NOTPAY, 10% paid) at simulator
# latency 0 and 50 ms, the worker's peak RSS, where the CPU goes per settled
# order (worker, PostgreSQL, RabbitMQ, the simulator, from /proc), the
# worker's crypto share, PostgreSQL against a pgbench baseline of the same
# writes, the lane bound at 50 ms, and the lag between deadline and
# settlement at a steady 100 orders/s; then a table of the targets, met or
# not. Markdown tables, fit for docs/benchmarks.md. Everything runs on this
# machine: PostgreSQL, RabbitMQ, the simulator (in the bench process), the
# release worker binary, pgbench. Needs rabbitmqctl (root) and pgbench
# (postgresql-client; or PGBENCH=/path/to/pgbench).
# Usage: scripts/bench.sh worker [--orders N] [--scenarios 0/16,0/64,50/64]
#        [--pgbench-transactions N] [--lag-seconds S] [--metrics-orders N]
#        [--metrics-pairs P] [--only-cost | --only-metrics | --skip-metrics]
# --scenarios picks the throughput scenarios, simulator latency ms / worker
# --worker-concurrency. --only-cost runs the pgbench baseline, the throughput
# and cost scenarios and the targets only (e.g. scripts/bench.sh worker
# --orders 3000 --only-cost). The metrics part runs the throughput scenario
# with metrics off and on, alternated, and prints the cost of metrics side by
# side (orders/s and the worker's CPU per order); --only-metrics runs it
# alone, --skip-metrics leaves it out. The worker binary is the one built here
# unless BENCH_WORKER_BIN names another (e.g. an older build, for a
# before/after table).
bench_worker() {
    if ! command -v "${PGBENCH:-pgbench}" >/dev/null 2>&1; then
        echo "bench: pgbench not found: install it (apt-get install postgresql-client-15) or set PGBENCH" >&2
        exit 1
    fi
    bench_env
    cargo build --quiet --release -p order-timeout-worker
    export BENCH_WORKER_BIN="${BENCH_WORKER_BIN:-$(release_bin order-timeout-worker)}"
    run_bench worker "$@"
}

# Front door benchmark: `POST /v1/orders` and WeChat Pay payment
# notifications per second through the release `order-producer serve`, 32
# client threads, p50/p99 latency and serve's CPU per request, beside the
# per-process `create-order` rate and this machine's RSA-2048 signature rate
# in the same run. Fresh database per run (like the tests); needs local
# PostgreSQL and RabbitMQ.
# Usage: scripts/bench.sh front-door [--orders N] [--clients N] [--create-order-runs N]
bench_front_door() {
    bench_env
    cargo build --quiet --release -p order-producer
    export BENCH_PRODUCER_BIN="$(release_bin order-producer)"
    run_bench front-door "$@"
}

# Benchmark of `order-producer parked --replay`: N valid messages parked
# straight into queue.ordertimeout.parked (with the worker's park headers) in
# a vhost of their own, then the release binary replays them; prints
# messages/s beside this machine's RSA-2048 signature rate, and checks that
# every message arrived in queue.ordertimeout exactly once and the parking
# queue is empty. Needs local RabbitMQ and rabbitmqctl (root).
# Usage: scripts/bench.sh parked [--messages N] [--runs N]
bench_parked() {
    bench_env
    cargo build --quiet --release -p order-producer
    export BENCH_PRODUCER_BIN="$(release_bin order-producer)"
    run_bench parked "$@"
}

# Benchmark of `order-timeout-worker reconcile`: a day of N payments at the
# WeChat Pay simulator, and N pending orders here, in a database of their
# own. Run 1 finds every payment missing here and records each through the
# late-notification path ("acted"); run 2 of the same day finds every row
# matched. Prints, per run and as the median of --runs fresh repetitions,
# seconds and rows/s beside this machine's RSA-2048 signature rate (each run
# signs two requests; the time is the store's). Checks the counts of each
# report. Needs psql, python3 and a local PostgreSQL. It drives the release
# binaries from here (no binary of the bench crate).
# Usage: scripts/bench.sh reconcile [--payments N] [--runs N]
bench_reconcile() {
    N=20000
    RUNS=3
    while [ $# -gt 0 ]; do
        case "$1" in
            --payments) N="$2"; shift 2 ;;
            --runs) RUNS="$2"; shift 2 ;;
            *) echo "usage: scripts/bench.sh reconcile [--payments N] [--runs N]" >&2; exit 2 ;;
        esac
    done
    bench_env
    cargo build --quiet --release -p order-producer -p order-timeout-worker -p wechatpay-sim
    PRODUCER="$(release_bin order-producer)"
    WORKER="$(release_bin order-timeout-worker)"
    SIM_BIN="$(release_bin wechatpay-sim)"
    WORK="$(mktemp -d)"
    DB=ot_bench_reconcile
    ADMIN_URL="${TEST_DATABASE_URL%/*}/postgres"
    export DATABASE_URL="${TEST_DATABASE_URL%/*}/$DB" RUST_LOG=error
    SIM_PID=
    cleanup() {
        [ -z "$SIM_PID" ] || kill "$SIM_PID" 2>/dev/null || true
        psql -qAt "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
        rm -rf "$WORK"
        scripts/drop-test-templates.sh
    }
    trap cleanup EXIT
    # Yesterday in Beijing time (UTC+8): the day the timer reconciles.
    DAY="$(date -u -d "$(date -u -d '+8 hours' +%F) -1 day" +%F)"
    SIGN="$(openssl speed -seconds 2 rsa2048 2>/dev/null | awk '/^rsa 2048/ {print $6}')"
    echo "reconcile benchmark: $N payments on $DAY, $RUNS runs; RSA-2048 sign/s on one core here (openssl speed): $SIGN"

    local results=() line r
    for r in $(seq "$RUNS"); do
        line="$(reconcile_run)"
        echo "  run $r: all missing here (acted) ${line% *} s, all matched ${line#* } s"
        results+=("$line")
    done
    python3 - "$N" "$SIGN" "${results[@]}" <<'PY'
import sys, statistics
n, sign = int(sys.argv[1]), sys.argv[2]
acted = statistics.median(float(x.split()[0]) for x in sys.argv[3:])
matched = statistics.median(float(x.split()[1]) for x in sys.argv[3:])
print(f"| rows | all acted on: s (rows/s) | all matched: s (rows/s) | RSA-2048 sign/s |")
print(f"| {n} | {acted:.1f} ({n/acted:,.0f}) | {matched:.1f} ({n/matched:,.0f}) | {sign} |")
PY
}

# One fresh repetition of the reconcile benchmark; prints
# "acted_seconds matched_seconds".
reconcile_run() {
    psql -qAt "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
    "$PRODUCER" migrate >/dev/null 2>&1
    "$PRODUCER" stock set --sku TEA --quantity $((N + 1)) --price-fen 100 >/dev/null 2>&1
    psql -qAt "$DATABASE_URL" -v ON_ERROR_STOP=1 >/dev/null <<SQL
WITH o AS (
  INSERT INTO orders (order_no, status, total_fen, deadline)
  SELECT 'BENCH' || lpad(g::text, 10, '0'), 'pending_payment', 100, now() + interval '1 hour'
    FROM generate_series(1, $N) g RETURNING id
)
INSERT INTO order_items (order_id, sku_id, quantity, unit_price_fen)
SELECT o.id, (SELECT id FROM skus WHERE code = 'TEA'), 1, 100 FROM o;
UPDATE skus SET stock = stock - $N WHERE code = 'TEA';
SQL
    rm -rf "$WORK/keys" "$WORK/sim.env"
    "$SIM_BIN" --wechatpay-sim-listen 127.0.0.1:0 --wechatpay-sim-key-dir "$WORK/keys" \
        --wechatpay-sim-env-file "$WORK/sim.env" >/dev/null 2>"$WORK/sim.log" &
    SIM_PID=$!
    for _ in $(seq 100); do [ -s "$WORK/sim.env" ] && break; sleep 0.1; done
    set -a; . "$WORK/sim.env"; set +a
    python3 - "$N" "$DAY" "$WECHATPAY_BASE_URL" <<'PY'
import sys, json, http.client, urllib.parse
n, day, base = int(sys.argv[1]), sys.argv[2], urllib.parse.urlparse(sys.argv[3])
c = http.client.HTTPConnection(base.hostname, base.port)
for g in range(1, n + 1):
    body = json.dumps({"trade_state": "SUCCESS", "amount_total": 100,
        "transaction_id": "42%026d" % g,
        "success_time": "%sT%02d:%02d:%02d+08:00" % (day, 1 + g // 3600 % 22, g // 60 % 60, g % 60)})
    c.request("PUT", "/sim/orders/BENCH%010d" % g, body)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
    local times=()
    for expect in acted matched; do
        local s e
        s=$(date +%s.%N)
        "$WORKER" reconcile --date "$DAY" --json >"$WORK/report.json"
        e=$(date +%s.%N)
        python3 - "$WORK/report.json" "$expect" "$N" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); n = int(sys.argv[3])
got = {"acted": len(r["acted"]), "matched": r["matched"]}
assert r["bill_rows"] == n and got[sys.argv[2]] == n and not r["discrepancies"], r
PY
        times+=("$(python3 -c "print(round($e - $s, 2))")")
    done
    kill "$SIM_PID"; wait "$SIM_PID" 2>/dev/null || true; SIM_PID=
    echo "${times[*]}"
}

# Benchmark of the outbox relay: outbox rows -> published, confirmed by
# RabbitMQ and marked, per second; and a bare confirmed publisher on the same
# messages for comparison. Uses a fresh database and vhost per run (like the
# tests), so it needs local PostgreSQL and RabbitMQ and rabbitmqctl (root).
# Usage: scripts/bench.sh relay [--messages N] [--runs N] [--batch-size N]
bench_relay() {
    bench_env
    run_bench relay "$@"
}

# Scale benchmark: N pending delay messages (default 1,000,000) on classic
# queues (the local broker) and on quorum queues (the three-node cluster of
# scripts/cluster.sh, on this machine): the relay's publish rate, broker
# memory per million pending, the rate at which they dead-letter when they
# expire one after the other at the pace they were published (a TTL longer
# than the publishing: --ttl-seconds, default 300; RabbitMQ fixes a message's
# expiry when it is enqueued), and the worker's drain rate. Dead-lettering
# with no progress for 2 minutes is reported as stalled. Prints a table;
# needs root (rabbitmqctl, the cluster), about 8 GB of free memory for a
# million, and half an hour.
# Usage: scripts/bench.sh scale [--orders N] [--drain-seconds S] [--ttl-seconds T]
#                               [--only-classic | --only-quorum]
bench_scale() {
    bench_env
    cargo build --quiet --release -p order-timeout-worker
    export BENCH_WORKER_BIN="$(release_bin order-timeout-worker)"
    run_bench scale "$@"
}

# Benchmark of the WeChat Pay client's CPU hot spot: RSA-2048 signatures/s
# and verifications/s on one thread, and query+close round trips/s against
# the in-process simulator. Prints medians of several runs. Needs neither
# PostgreSQL nor RabbitMQ.
# Usage: scripts/bench.sh signing [--runs N] [--seconds S]
bench_signing() {
    run_bench signing "$@"
}

if [ $# -eq 0 ]; then
    usage >&2
    exit 2
fi
name="$1"
shift
case "$name" in
    -h | --help | help) usage ;;
    worker) bench_worker "$@" ;;
    front-door) bench_front_door "$@" ;;
    parked) bench_parked "$@" ;;
    reconcile) bench_reconcile "$@" ;;
    relay) bench_relay "$@" ;;
    scale) bench_scale "$@" ;;
    signing) bench_signing "$@" ;;
    *)
        echo "bench: unknown benchmark '$name'" >&2
        usage >&2
        exit 2
        ;;
esac
