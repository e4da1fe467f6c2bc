#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this one machine, for the cluster tests
# and for trying the cluster locally, beside (not instead of) the machine's
# own RabbitMQ on 5672. Uses the installed rabbitmq-server; run as root (the
# nodes run as the rabbitmq user, like the machine's own, and share its
# Erlang cookie, so `rabbitmqctl -n NODE` works).
#
#   scripts/cluster.sh up      start the nodes (idempotent) and cluster them
#   scripts/cluster.sh down    stop them and delete their data
#   scripts/cluster.sh status  each node: running or not; the cluster's view
#   scripts/cluster.sh urls    the AMQP URLs, comma-separated (vhost %2f)
#   scripts/cluster.sh stop N  stop node N's RabbitMQ application (a node failure)
#   scripts/cluster.sh start N start it again
#
# Nodes ot-rabbit-1@localhost .. ot-rabbit-3@localhost; AMQP ports
# CLUSTER_BASE_PORT+1 .. +3 (default 5681-5683), distribution ports 20000
# above those; data, logs and configuration under CLUSTER_DIR (default
# /tmp/ot-cluster). Management and every other plugin are off.
set -euo pipefail

BASE_PORT="${CLUSTER_BASE_PORT:-5680}"
DIR="${CLUSTER_DIR:-/tmp/ot-cluster}"
NODES=(1 2 3)

say() { echo "cluster: $*" >&2; }
node() { echo "ot-rabbit-$1@localhost"; }
port() { echo $((BASE_PORT + $1)); }
ctl() { rabbitmqctl -q -n "$(node "$1")" "${@:2}"; }

running() { ctl "$1" await_startup --timeout 1 >/dev/null 2>&1; }

start_node() {
    local n=$1 d="$DIR/node$1"
    if running "$n"; then
        return 0
    fi
    mkdir -p "$d/mnesia" "$d/log"
    echo '[].' >"$d/enabled_plugins"
    cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.default = $(port "$n")
loopback_users.guest = true
# Quorum queues keep their log here; small segments suit a test machine.
raft.segment_max_entries = 65536
EOF
    chown -R rabbitmq:rabbitmq "$d"
    say "starting $(node "$n") on 127.0.0.1:$(port "$n")"
    # The Debian wrapper runs it as the rabbitmq user (keeping these
    # variables); -detached returns at once.
    env RABBITMQ_NODENAME="$(node "$n")" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$(port "$n")" \
        RABBITMQ_DIST_PORT=$(($(port "$n") + 20000)) \
        RABBITMQ_MNESIA_BASE="$d/mnesia" \
        RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_PID_FILE="$d/pid" \
        RABBITMQ_CONFIG_FILE="$d/rabbitmq" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
        rabbitmq-server -detached
}

wait_node() {
    local n=$1 i
    # `-detached` returns while the node is still in its prelaunch phase,
    # not yet known to epmd under its name, and `await_startup` fails at once
    # on a node it cannot find (seen on a loaded machine): wait until it
    # answers a ping first.
    for ((i = 0; i < 240; i++)); do
        ctl "$n" ping >/dev/null 2>&1 && break
        sleep 0.5
    done
    if ! ctl "$n" await_startup --timeout 120 >/dev/null; then
        say "$(node "$n") did not start; its log: $DIR/node$n/log"
        return 1
    fi
}

joined() { # node n is in node 1's cluster
    ctl 1 cluster_status --formatter json 2>/dev/null | grep -q "\"$(node "$1")\""
}

up() {
    command -v rabbitmq-server >/dev/null || { say "rabbitmq-server is not installed (apt-get install rabbitmq-server)"; exit 1; }
    for n in "${NODES[@]}"; do start_node "$n"; done
    for n in "${NODES[@]}"; do wait_node "$n"; done
    for n in 2 3; do
        if ! joined "$n" || ! ctl "$n" cluster_status --formatter json | grep -q "\"$(node 1)\""; then
            say "joining $(node "$n") to $(node 1) (output in $DIR/join.log)"
            {
                ctl "$n" stop_app && ctl "$n" reset && ctl "$n" join_cluster "$(node 1)" && ctl "$n" start_app
            } >>"$DIR/join.log" 2>&1 || { cat "$DIR/join.log" >&2; exit 1; }
            wait_node "$n"
        fi
    done
    say "up: $(urls)"
}

down() {
    for n in "${NODES[@]}"; do
        if running "$n" || ctl "$n" ping >/dev/null 2>&1; then
            say "stopping $(node "$n")"
            ctl "$n" shutdown >/dev/null 2>&1 || ctl "$n" stop >/dev/null 2>&1 || true
        fi
    done
    rm -rf "$DIR"
    say "down"
}

status() {
    local n
    for n in "${NODES[@]}"; do
        if running "$n"; then
            echo "$(node "$n") 127.0.0.1:$(port "$n") running"
        else
            echo "$(node "$n") 127.0.0.1:$(port "$n") not running"
        fi
    done
    for n in "${NODES[@]}"; do
        if running "$n"; then
            ctl "$n" cluster_status
            return 0
        fi
    done
}

urls() {
    local out=() n
    for n in "${NODES[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(port "$n")/%2f"); done
    (IFS=,; echo "${out[*]}")
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    urls) urls ;;
    stop) say "stopping the application of $(node "$2")"; ctl "$2" stop_app ;;
    start) say "starting the application of $(node "$2")"; ctl "$2" start_app; wait_node "$2" ;;
    *) echo "usage: $0 up|down|status|urls|stop N|start N" >&2; exit 2 ;;
esac
