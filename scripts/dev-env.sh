#!/usr/bin/env bash
# Makes PostgreSQL and RabbitMQ reachable for the demo and the tests.
#
#   already reachable          -> does nothing
#   installed locally, stopped -> starts it and waits until it answers
#   not installed              -> prints how to install it, exits 1
#
# Idempotent; says what it did. Configured by PGHOST/PGPORT (default
# 127.0.0.1:5432) and AMQP_HOST/AMQP_PORT (default 127.0.0.1:5672).
# (Starting the services under Docker comes with docker/compose.yml.)
set -euo pipefail

PGHOST="${PGHOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
AMQP_HOST="${AMQP_HOST:-127.0.0.1}"
AMQP_PORT="${AMQP_PORT:-5672}"

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

postgres() {
    if port_open "$PGHOST" "$PGPORT"; then
        say "PostgreSQL is reachable at $PGHOST:$PGPORT"
        return 0
    fi
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        local version
        version="$(ls /etc/postgresql | sort -V | tail -1)"
        say "starting the local PostgreSQL $version cluster"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        wait_for PostgreSQL "$PGHOST" "$PGPORT" 30
        say "PostgreSQL started"
        return 0
    fi
    say "PostgreSQL is not reachable at $PGHOST:$PGPORT and not installed here. Install it with:"
    say "  apt-get install -y postgresql && pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start"
    say "(trust auth for user postgres on 127.0.0.1 is what the defaults expect)"
    return 1
}

rabbitmq() {
    if port_open "$AMQP_HOST" "$AMQP_PORT"; then
        say "RabbitMQ is reachable at $AMQP_HOST:$AMQP_PORT"
        return 0
    fi
    if command -v rabbitmq-server >/dev/null; then
        say "starting the local RabbitMQ"
        rabbitmq-server -detached
        wait_for RabbitMQ "$AMQP_HOST" "$AMQP_PORT" 90
        say "RabbitMQ started"
        return 0
    fi
    say "RabbitMQ is not reachable at $AMQP_HOST:$AMQP_PORT and not installed here. Install it with:"
    say "  apt-get install -y rabbitmq-server && rabbitmq-server -detached"
    return 1
}

postgres
rabbitmq
