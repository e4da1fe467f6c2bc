#!/usr/bin/env bash
# The demo, end to end: real PostgreSQL and RabbitMQ, the WeChat Pay
# simulator, a 10-second payment window. Creates nine orders whose buyers
# behave differently (among them one whose payment does not match the order
# and one who pays from a stale checkout page after the order was closed),
# runs the relay and the worker, and prints what became of each order and of
# the stock, with the conservation check. Stops
# everything it started, also on Ctrl-C. Exit 0 when every order ended as
# its payment state demands and stock is conserved.
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
export RECHECK_AFTER=5s               # the recheck after an ORDER_NOT_EXIST close
export RUST_LOG="${RUST_LOG:-info}"
unset PAYMENT_WINDOWS QUEUE_TYPE
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
"$BIN/wechatpay-sim" --listen 127.0.0.1:0 --key-dir "$WORK/keys" --env-file "$WORK/sim.env" >/dev/null 2>"$WORK/sim.log" &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$WORK/sim.env" ] && break; sleep 0.1; done
set -a; . "$WORK/sim.env"; set +a
SIM="$WECHATPAY_BASE_URL"
curl -sf "$SIM/sim/health" >/dev/null
echo "simulator at $SIM"

sim_state() { curl -sf -X PUT "$SIM/sim/orders/$1" -d "{\"trade_state\":\"$2\",\"amount_total\":$3}" >/dev/null; }
sim_pay() { curl -sf -X POST "$SIM/sim/orders/$1/pay" >/dev/null; }
total_of() { demo_psql "SELECT total_fen FROM orders WHERE order_no = '$1'"; }

say "orders (payment window ${WINDOW_S} s)"
declare -A LABEL EXPECT ITEMS
ORDERS=()
new_order() { # key label expected items...
    local key="$1" label="$2" expect="$3"
    shift 3
    local args=() no
    for item in "$@"; do args+=(--item "$item"); done
    no="$(producer create-order "${args[@]}" 2>/dev/null)"
    ORDERS+=("$no"); LABEL[$no]="$label"; EXPECT[$no]="$expect"; ITEMS[$no]="$*"
    eval "$key=$no"
}
new_order A "never paid (no payment order at WeChat Pay)" closed TEA:2
new_order B "left the cashier without paying (NOTPAY)" closed MUG:1
new_order C "paid at once" paid TEA:1 CAKE:1
new_order D "paid at once" paid MUG:2
new_order E "paid 2 s before the deadline, notification lost" paid CAKE:1
new_order F "still entering the password at the deadline" paid TEA:3
new_order G "payment failed (PAYERROR)" closed MUG:1
new_order H "paid 1 fen instead of the total (a tampered payment)" needs-human TEA:1
new_order I "no payment order at the deadline, pays 2 s later from a stale page" closed TEA:1
sim_state "$B" NOTPAY "$(total_of "$B")"
for o in "$C" "$D"; do sim_state "$o" NOTPAY "$(total_of "$o")"; sim_pay "$o"; done
sim_state "$E" NOTPAY "$(total_of "$E")"
sim_state "$F" USERPAYING "$(total_of "$F")"
sim_state "$G" PAYERROR "$(total_of "$G")"
sim_state "$H" NOTPAY 1
sim_pay "$H"
for no in "${ORDERS[@]}"; do printf '  %s  %-14s %s\n' "$no" "${ITEMS[$no]}" "${LABEL[$no]}"; done
# The buyers who act later.
later() { # seconds order
    sleep "$1"
    sim_pay "$2"
}
later $((WINDOW_S - 2)) "$E" &
PIDS+=($!)
later $((WINDOW_S + 3)) "$F" &
PIDS+=($!)
stale_page() { # seconds order: a payment order created after our close, paid
    sleep "$1"
    sim_state "$2" NOTPAY "$(total_of "$2")"
    sim_pay "$2"
}
stale_page $((WINDOW_S + 2)) "$I" &
PIDS+=($!)

say "relay (outbox -> delay queue) and worker"
producer relay --once
"$BIN/order-timeout-worker" --concurrency 4 --summary-interval 1h 2>"$WORK/worker.log" &
WORKER=$!
PIDS+=($WORKER)
echo "waiting for the deadline and the settlements (worker log: one line per order)"
# Follows the log until the worker exits (then the whole pipeline ends).
tail -n +1 -f --pid="$WORKER" "$WORK/worker.log" 2>/dev/null |
    grep --line-buffered -E "order [0-9A-Z]+:" | sed -u 's/^\[[^]]*\] */  /' &
TAIL=$!
deadline=$((SECONDS + 60))
# Until every order is settled (or waits for a human) and every recheck done.
while [ "$(demo_psql "SELECT count(*) FROM orders WHERE (status = 'pending_payment' AND anomaly IS NULL) OR recheck_at IS NOT NULL")" != 0 ]; do
    if [ $SECONDS -ge $deadline ]; then echo "demo: orders still pending after 60 s" >&2; break; fi
    sleep 0.5
done
kill -TERM "$WORKER" 2>/dev/null || true
wait "$WORKER" 2>/dev/null || true
wait "$TAIL" 2>/dev/null || true

say "result"
ok=0
printf '%-28s %-10s %-12s %-12s %s\n' ORDER "AT WECHAT" EXPECTED OUTCOME "WHAT HAPPENED"
for no in "${ORDERS[@]}"; do
    IFS='|' read -r status reason payments late anomaly recheck <<<"$(demo_psql "SELECT o.status, coalesce(o.close_reason, ''),
        (SELECT count(*) FROM payments p WHERE p.order_id = o.id),
        (SELECT count(*) FROM payments p WHERE p.order_id = o.id AND p.paid_after_close),
        coalesce(o.anomaly, ''),
        coalesce((SELECT e.detail FROM order_events e WHERE e.order_id = o.id AND e.kind = 'recheck'), '')
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
    [ "$late" = 0 ] || what="$what; PAID AFTER CLOSE: $late payment to refund"
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
echo "parked messages: ${parked:-?}; payments to refund: $(demo_psql "SELECT count(*) FROM payments WHERE paid_after_close"); orders that need a human: $(demo_psql "SELECT count(*) FROM orders WHERE anomaly IS NOT NULL")"
echo "(the demo database $DEMO_DB and vhost $DEMO_VHOST stay for a look: DATABASE_URL=$DATABASE_URL order-producer status)"
if [ $ok -eq 0 ]; then
    echo "demo: every order settled as its payment state demands; stock conserved"
else
    echo "demo: FAILED: see the MISMATCH/NO lines above" >&2
fi
exit $ok
