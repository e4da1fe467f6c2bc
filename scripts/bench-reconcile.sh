#!/usr/bin/env bash
# Benchmark of `order-timeout-worker reconcile` (not a test): a day of N
# payments at the WeChat Pay simulator, and N pending orders here, in a
# database of their own. Run 1 finds every payment missing here and records
# each through the late-notification path ("acted"); run 2 of the same day
# finds every row matched. Prints, per run and as the median of --runs
# fresh repetitions, seconds and rows/s beside this machine's RSA-2048
# signature rate (each run signs two requests; the time is the store's).
# Checks the counts of each report. Needs psql, python3 and a local
# PostgreSQL. Usage: scripts/bench-reconcile.sh [--payments N] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=20000
RUNS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --payments) N="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        *) echo "usage: $0 [--payments N] [--runs N]" >&2; exit 2 ;;
    esac
done
. scripts/bench-env.sh
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

one_run() { # prints "acted_seconds matched_seconds"
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

results=()
for r in $(seq "$RUNS"); do
    line="$(one_run)"
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
