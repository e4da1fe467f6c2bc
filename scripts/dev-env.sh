#!/usr/bin/env bash
# Makes PostgreSQL and RabbitMQ reachable for the demo and the tests.
#
#   already reachable            -> does nothing
#   a Docker engine is running   -> `docker compose up -d` the service from
#                                   docker/compose.yml and waits until healthy
#   installed locally, stopped   -> starts it and waits until it answers
#   none of these                -> prints how to install it, exits 1
#
# Idempotent; says what it did. Configured by PGHOST/PGPORT (default
# 127.0.0.1:5432) and AMQP_HOST/AMQP_PORT (default 127.0.0.1:5672).
set -euo pipefail
cd "$(dirname "$0")/.."

PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
AMQP_HOST="${AMQP_HOST:-127.0.0.1}"
AMQP_PORT="${AMQP_PORT:-5672}"
COMPOSE=(docker compose -f docker/compose.yml)

say() { echo "dev-env: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # name host port seconds
    local i
    for ((i = 0; i < $4 * 2; i++)); do
        port_open "$2" "$3" && return 0
        sleep 0.5
    done
    say "$1 did not start listening on $2:$3 within $4 s"
    return 1
}

docker_engine() {
    command -v docker >/dev/null && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1
}

compose_up() { # service name host port
    say "starting $2 with Docker (${COMPOSE[*]} up -d $1)"
    "${COMPOSE[@]}" up -d --wait "$1"
    wait_for "$2" "$3" "$4" 120
    say "$2 is up in Docker"
}

postgres() {
    if port_open "$PGHOST" "$PGPORT"; then
        say "PostgreSQL is reachable at $PGHOST:$PGPORT"
    elif docker_engine; then
        compose_up postgres PostgreSQL "$PGHOST" "$PGPORT"
    elif command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        local version
        version="$(ls /etc/postgresql | sort -V | tail -1)"
        say "starting the local PostgreSQL $version cluster"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        wait_for PostgreSQL "$PGHOST" "$PGPORT" 30
        say "PostgreSQL started"
    else
        say "PostgreSQL is not reachable at $PGHOST:$PGPORT, not installed here, and no Docker engine runs. Either:"
        say "  apt-get install -y postgresql && pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start"
        say "  (the defaults expect trust auth for user postgres on 127.0.0.1), or start Docker and run this again"
        return 1
    fi
}

rabbitmq() {
    if port_open "$AMQP_HOST" "$AMQP_PORT"; then
        say "RabbitMQ is reachable at $AMQP_HOST:$AMQP_PORT"
    elif docker_engine; then
        compose_up rabbitmq RabbitMQ "$AMQP_HOST" "$AMQP_PORT"
    elif command -v rabbitmq-server >/dev/null; then
        say "starting the local RabbitMQ"
        rabbitmq-server -detached
        wait_for RabbitMQ "$AMQP_HOST" "$AMQP_PORT" 90
        say "RabbitMQ started"
    else
        say "RabbitMQ is not reachable at $AMQP_HOST:$AMQP_PORT, not installed here, and no Docker engine runs. Either:"
        say "  apt-get install -y rabbitmq-server && rabbitmq-server -detached"
        say "  or start Docker and run this again"
        return 1
    fi
}

postgres
rabbitmq
