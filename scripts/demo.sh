#!/usr/bin/env bash
# The demo, end to end: real PostgreSQL and RabbitMQ, the WeChat Pay
# simulator, a 10-second payment window. Starts the front door
# (`order-producer serve`), the relay and the worker; nine buyers order
# through the shop API and behave differently: paying at once (their
# payment notification marks the order paid within a second), paying with
# the notification lost (the worker compensates at the deadline), trying to
# pay after the deadline (WeChat Pay refuses: the prepay's time_expire is
# the deadline), paying a wrong amount, paying from a stale checkout page
# after the close (the worker refunds it, exactly once). Then closes the
# books: reconciles the day against the simulator's trade bill. Prints what
# became of each order and of the stock, with the conservation check. Stops
# everything it started, also on Ctrl-C. Exit 0 when every order ended as
# its payment state demands, every payment after close was refunded, stock
# is conserved and the day's bill matches the books.
#
# Uses its own database (order_timeout_demo, recreated each run) and RabbitMQ
# vhost (order_timeout_demo), so it never touches other data. Needs psql and
# rabbitmqctl locally, or the Docker stack's (scripts/dev-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
AMQP_HOST="${AMQP_HOST:-127.0.0.1}"
AMQP_PORT="${AMQP_PORT:-5672}"
DEMO_DB=order_timeout_demo
DEMO_VHOST=order_timeout_demo
export DATABASE_URL="postgres://postgres@$PGHOST:$PGPORT/$DEMO_DB"
export AMQP_URL="amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/$DEMO_VHOST"
export DELAY_TTL_MS=10000             # the payment window: 10 s
export RETRY_DELAYS=1s,2s,4s          # quick retries for the demo
export WORKER_RECHECK_AFTER=5s        # the recheck after an ORDER_NOT_EXIST close
export RUST_LOG="${RUST_LOG:-info}"
unset DELAY_WINDOWS PAYMENT_WINDOWS QUEUE_TYPE
WINDOW_S=10

say() { printf '\n== %s\n' "$*"; }

docker_engine() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

admin_psql() { # SQL on the maintenance database
    if command -v psql >/dev/null; then
        psql "postgres://postgres@$PGHOST:$PGPORT/postgres" -qAt -v ON_ERROR_STOP=1 -c "$1"
    else
        docker compose -f docker/compose.yml exec -T postgres psql -U postgres -qAt -v ON_ERROR_STOP=1 -c "$1"
    fi
}

demo_psql() { # SQL on the demo database
    if command -v psql >/dev/null; then
        psql "$DATABASE_URL" -qAt -F '|' -v ON_ERROR_STOP=1 -c "$1"
    else
        docker compose -f docker/compose.yml exec -T postgres psql -U postgres -d "$DEMO_DB" -qAt -F '|' -v ON_ERROR_STOP=1 -c "$1"
    fi
}

rmqctl() {
    if command -v rabbitmqctl >/dev/null && rabbitmqctl -q status >/dev/null 2>&1; then
        rabbitmqctl -q "$@"
    elif docker_engine; then
        docker compose -f docker/compose.yml exec -T rabbitmq rabbitmqctl -q "$@"
    else
        echo "demo: rabbitmqctl is needed to create the demo vhost (run as root, or start the Docker stack)" >&2
        return 1
    fi
}

PIDS=()
WORK="$(mktemp -d)"
cleanup() {
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        pkill -TERM -P "$pid" 2>/dev/null || true   # its children (a buyer's sleep)
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted; stopping what it started" >&2; exit 130' INT TERM

say "services"
scripts/dev-env.sh

say "release build"
cargo build --release --quiet -p order-producer -p order-timeout-worker -p wechatpay-sim
# Where cargo put them: CARGO_TARGET_DIR (relative to the repository, like
# cargo's) or ./target.
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/release"
producer() { "$BIN/order-producer" "$@"; }

say "fresh demo database and vhost"
admin_psql "DROP DATABASE IF EXISTS $DEMO_DB WITH (FORCE)"
rmqctl delete_vhost "$DEMO_VHOST" >/dev/null 2>&1 || true
rmqctl add_vhost "$DEMO_VHOST" >/dev/null
rmqctl set_permissions -p "$DEMO_VHOST" guest '.*' '.*' '.*' >/dev/null
producer migrate
producer declare

say "stock"
producer stock set --sku TEA --quantity 20 --price-fen 350
producer stock set --sku MUG --quantity 10 --price-fen 2500
producer stock set --sku CAKE --quantity 5 --price-fen 1800
BEFORE="$(demo_psql "SELECT code, stock FROM skus ORDER BY code")"

say "the WeChat Pay simulator"
APPID=wxd678efh567hg6787
"$BIN/wechatpay-sim" --wechatpay-sim-listen 127.0.0.1:0 --wechatpay-sim-appid "$APPID" \
    --wechatpay-sim-key-dir "$WORK/keys" --wechatpay-sim-env-file "$WORK/sim.env" >/dev/null 2>"$WORK/sim.log" &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$WORK/sim.env" ] && break; sleep 0.1; done
set -a; . "$WORK/sim.env"; set +a
SIM="$WECHATPAY_BASE_URL"
curl -sf "$SIM/sim/health" >/dev/null
echo "simulator at $SIM"

say "the front door (order-producer serve), the relay and the worker"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
API="http://127.0.0.1:$PORT"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/api.token"
chmod 600 "$WORK/api.token"
TOKEN="$(cat "$WORK/api.token")"
API_LISTEN="127.0.0.1:$PORT" API_TOKEN_FILE="$WORK/api.token" WECHATPAY_APPID="$APPID" \
    WECHATPAY_NOTIFY_URL="$API/wechatpay/notify/transaction" \
    producer serve 2>"$WORK/serve.log" &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "$API/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "$API/readyz" >/dev/null || { echo "demo: the front door did not become ready:" >&2; cat "$WORK/serve.log" >&2; exit 1; }
echo "front door at $API (shop API token in $WORK/api.token)"
producer relay --relay-poll-interval 100ms 2>"$WORK/relay.log" &
PIDS+=($!)
METRICS_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
WORKER_REFUND_INTERVAL=1s WECHATPAY_REFUND_NOTIFY_URL="$API/wechatpay/notify/refund" \
    METRICS_LISTEN="127.0.0.1:$METRICS_PORT" METRICS_GAUGE_INTERVAL=1s \
    "$BIN/order-timeout-worker" --worker-concurrency 4 --worker-summary-interval 1h 2>"$WORK/worker.log" &
WORKER=$!
PIDS+=($WORKER)

api() { # METHOD PATH [BODY]: the shop API with the token
    curl -sS -X "$1" "$API$2" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' ${3:+-d "$3"}
}
json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1]) or "")' "$1"; }
sim_state() { curl -sf -X PUT "$SIM/sim/orders/$1" -d "{\"trade_state\":\"$2\",\"amount_total\":$3${4:+,\"notify_url\":\"$4\"}}" >/dev/null; }
sim_pay() { curl -sf -X POST "$SIM/sim/orders/$1/pay" >/dev/null; }
total_of() { demo_psql "SELECT total_fen FROM orders WHERE order_no = '$1'"; }
code_url() { api POST "/v1/orders/$1/wechatpay/native" | json_field code_url; }
status_of() { api GET "/v1/orders/$1" | json_field status; }

say "orders through the shop API (payment window ${WINDOW_S} s)"
declare -A LABEL EXPECT ITEMS
ORDERS=()
new_order() { # key label expected items...
    local key="$1" label="$2" expect="$3"
    shift 3
    local items=() no
    for item in "$@"; do items+=("{\"sku\":\"${item%%:*}\",\"quantity\":${item##*:}}"); done
    no="$(IFS=,; api POST /v1/orders "{\"items\":[${items[*]}]}" | json_field order_no)"
    [ -n "$no" ] || { echo "demo: order not created" >&2; exit 1; }
    ORDERS+=("$no"); LABEL[$no]="$label"; EXPECT[$no]="$expect"; ITEMS[$no]="$*"
    eval "$key=$no"
}
new_order A "never paid (no payment order at WeChat Pay)" closed TEA:2
new_order B "scanned the code, left without paying (NOTPAY)" closed MUG:1
new_order C "paid at once" paid TEA:1 CAKE:1
new_order D "paid at once" paid MUG:2
new_order E "paid at once, notification lost" paid CAKE:1
new_order F "tries to pay 2 s after the deadline" closed TEA:3
new_order G "payment failed (PAYERROR)" closed MUG:1
new_order H "paid 1 fen instead of the total (a tampered payment), a human refunds it" closed TEA:1
new_order I "no payment order at the deadline, pays 2 s later from a stale page (refunded)" closed TEA:1
for no in "${ORDERS[@]}"; do printf '  %s  %-14s %s\n' "$no" "${ITEMS[$no]}" "${LABEL[$no]}"; done

say "buyers get their WeChat Pay code (Native prepay, time_expire = the deadline)"
for o in "$B" "$C" "$D" "$E" "$F"; do printf '  %s  %s\n' "$o" "$(code_url "$o")"; done
sim_state "$G" PAYERROR "$(total_of "$G")"
sim_state "$H" NOTPAY 1 "$API/wechatpay/notify/transaction"

say "buyers pay; their notifications reach the front door"
for o in "$C" "$D"; do
    start=$(date +%s%N)
    sim_pay "$o"
    while [ "$(status_of "$o")" != paid ] && [ $(( ($(date +%s%N) - start) / 1000000 )) -lt 5000 ]; do sleep 0.02; done
    echo "  $o: $(status_of "$o") $(( ($(date +%s%N) - start) / 1000000 )) ms after paying"
done
curl -sf -X PUT "$SIM/sim/notifications" -d '{"drop":true}' >/dev/null
sim_pay "$E"
curl -sf -X PUT "$SIM/sim/notifications" -d '{"drop":false}' >/dev/null
echo "  $E: paid at WeChat Pay, its notification lost: $(status_of "$E") here until the worker asks"
sim_pay "$H"
sleep 0.5
echo "  $H: paid 1 fen: $(api GET "/v1/orders/$H" | json_field anomaly) (left for a human)"
# The buyers who act later.
too_late() { # seconds order: WeChat Pay refuses a payment after time_expire
    sleep "$1"
    if out="$(curl -s -X POST "$SIM/sim/orders/$2/pay")" && grep -q ORDER_CLOSED <<<"$out"; then
        echo "  $2: paying after the deadline: refused by WeChat Pay (ORDER_CLOSED)"
    else
        echo "  $2: paying after the deadline: NOT refused: $out" >&2
    fi
}
too_late $((WINDOW_S + 2)) "$F" &
PIDS+=($!)
stale_page() { # seconds order: a payment order created after our close, paid
    sleep "$1"
    sim_state "$2" NOTPAY "$(total_of "$2")"
    sim_pay "$2"
}
stale_page $((WINDOW_S + 2)) "$I" &
PIDS+=($!)

say "the deadline and the settlements (worker log: one line per order)"
# Follows the log until the worker exits (then the whole pipeline ends).
tail -n +1 -f --pid="$WORKER" "$WORK/worker.log" 2>/dev/null |
    grep --line-buffered -E "order [0-9A-Z]+:" | sed -u 's/^\[[^]]*\] */  /' &
TAIL=$!
deadline=$((SECONDS + 60))
# Until every order is settled (or waits for a human), every recheck done
# and every refund finished.
while [ "$(demo_psql "SELECT (SELECT count(*) FROM orders WHERE (status = 'pending_payment' AND anomaly IS NULL) OR recheck_at IS NOT NULL)
                           + (SELECT count(*) FROM refunds WHERE status IN ('requested', 'processing'))")" != 0 ]; do
    if [ $SECONDS -ge $deadline ]; then echo "demo: orders still pending after 60 s" >&2; break; fi
    sleep 0.5
done

say "a human decides (order-producer cases)"
# H paid 1 fen for a 350 fen order: neither paid nor closed, stock held,
# listed with what each side says and the decisions that apply.
producer cases | sed 's/^/  /'
# The decision: give the 1 fen back. One transaction: the payment recorded
# as one to refund, its refund queued, the order closed, its stock back;
# the decision event names who and why. The worker makes the refund.
producer cases refund "$H" --by demo --reason "paid 1 fen for a 350 fen order: give it back, the buyer orders again" | sed 's/^/  /'
# Its parked message has nothing left to settle.
producer cases drop "$H" --by demo --reason "decided by refund" | sed 's/^/  /'
deadline=$((SECONDS + 30))
while [ "$(demo_psql "SELECT count(*) FROM refunds WHERE status IN ('requested', 'processing')")" != 0 ]; do
    if [ $SECONDS -ge $deadline ]; then echo "demo: refunds still open after 30 s" >&2; break; fi
    sleep 0.5
done
# What Prometheus would scrape from the worker now (the gauges are read
# every second here): kept for the end.
sleep 1.2
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics.txt" 2>/dev/null || true
kill -TERM "$WORKER" 2>/dev/null || true
wait "$WORKER" 2>/dev/null || true
wait "$TAIL" 2>/dev/null || true

say "close the books: reconcile the day against WeChat Pay's trade bill"
# In production a timer reconciles yesterday after 10:00 Beijing time (the
# bill of a day exists once it is over); the simulator also serves the bill
# of the day so far, so the demo reconciles its own day. Every payment and
# refund WeChat Pay has must be recorded here, and the other way round.
TODAY="$(date -u -d '+8 hours' +%F)"   # Beijing time, the bill's day
reconciled=0
if "$BIN/order-timeout-worker" reconcile --date "$TODAY" >"$WORK/reconcile.txt" 2>"$WORK/reconcile.log"; then
    sed 's/^/  /' "$WORK/reconcile.txt"
    grep -q "discrepancies  0 new, 0 found before" "$WORK/reconcile.txt" || reconciled=1
else
    sed 's/^/  /' "$WORK/reconcile.log" >&2
    reconciled=1
fi

say "result"
ok=$reconciled
printf '%-28s %-10s %-12s %-12s %s\n' ORDER "AT WECHAT" EXPECTED OUTCOME "WHAT HAPPENED"
for no in "${ORDERS[@]}"; do
    IFS='|' read -r status reason payments late anomaly recheck refund <<<"$(demo_psql "SELECT o.status, coalesce(o.close_reason, ''),
        (SELECT count(*) FROM payments p WHERE p.order_id = o.id),
        (SELECT count(*) FROM payments p WHERE p.order_id = o.id AND p.paid_after_close),
        coalesce(o.anomaly, ''),
        coalesce((SELECT e.detail FROM order_events e WHERE e.order_id = o.id AND e.kind = 'recheck'), ''),
        coalesce((SELECT string_agg(r.status, ',') FROM refunds r WHERE r.order_id = o.id), '')
        FROM orders o WHERE order_no = '$no'")"
    wechat="$( (curl -sf "$SIM/sim/orders/$no" || true) | sed -n 's/.*"trade_state":"\([A-Z]*\)".*/\1/p')"
    [ -n "$wechat" ] || wechat="(none)"
    what="${LABEL[$no]}"
    case "$status" in
        closed) what="$what -> closed: $reason" ;;
        paid) what="$what -> paid, $payments payment recorded" ;;
        pending_payment) [ -z "$anomaly" ] || { status=needs-human; what="$what -> $anomaly: not paid, not closed, stock held"; } ;;
    esac
    [ -z "$recheck" ] || what="$what; recheck: $recheck"
    [ "$late" = 0 ] || what="$what; PAID AFTER CLOSE: $late payment, refund $refund"
    [ "$late" = 0 ] || [ "$refund" = succeeded ] || { what="$what (NOT REFUNDED)"; ok=1; }
    mark="ok"
    if [ "$status" != "${EXPECT[$no]}" ]; then mark="MISMATCH"; ok=1; fi
    printf '%-28s %-10s %-12s %-12s %s [%s]\n' "$no" "$wechat" "${EXPECT[$no]}" "$status" "$what" "$mark"
done

echo
printf '%-6s %8s %8s %12s %8s  %s\n' SKU BEFORE AFTER HELD LOADED CONSERVED
while IFS='|' read -r code stock held loaded; do
    before="$(grep "^$code|" <<<"$BEFORE" | cut -d'|' -f2)"
    if [ $((stock + held)) -eq "$loaded" ]; then c="yes: $stock + $held = $loaded"; else c="NO"; ok=1; fi
    printf '%-6s %8s %8s %12s %8s  %s\n' "$code" "$before" "$stock" "$held" "$loaded" "$c"
done <<<"$(demo_psql "SELECT s.code, s.stock,
    COALESCE((SELECT sum(oi.quantity) FROM order_items oi JOIN orders o ON o.id = oi.order_id
               WHERE oi.sku_id = s.id AND o.status IN ('pending_payment', 'paid')), 0),
    COALESCE((SELECT sum(a.delta) FROM stock_adjustments a WHERE a.sku_id = s.id), 0)
    FROM skus s ORDER BY s.code")"

parked="$(producer status 2>/dev/null | awk '/queue.ordertimeout.parked/ {print $2}')"
echo
echo "== the worker's metrics before it stopped (GET http://127.0.0.1:$METRICS_PORT/metrics, what Prometheus scrapes), non-zero:"
grep -E '^order_timeout_(settlements_total|parked_total|wechatpay_requests_total|refund_steps_total|orders|refunds|needs_human)[{ ]' \
    "$WORK/metrics.txt" | grep -v ' 0$' | sed 's/^/  /' || echo "  (metrics unavailable)"
echo
echo "parked messages: ${parked:-?}; payments after close: $(demo_psql "SELECT count(*) FROM payments WHERE paid_after_close"), refunded: $(demo_psql "SELECT count(*) FROM refunds WHERE status = 'succeeded'"); orders that need a human: $(demo_psql "SELECT count(*) FROM orders WHERE anomaly IS NOT NULL")"
echo "(the demo database $DEMO_DB and vhost $DEMO_VHOST stay for a look: DATABASE_URL=$DATABASE_URL order-producer status)"
if [ $ok -eq 0 ]; then
    echo "demo: every order settled as its payment state demands; stock conserved; the day's trade bill matches the books"
else
    [ $reconciled -eq 0 ] || echo "demo: the day's trade bill does not match the books (see \"close the books\" above)" >&2
    echo "demo: FAILED: see the MISMATCH/NO lines above" >&2
fi
exit $ok
