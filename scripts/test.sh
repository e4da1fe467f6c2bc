#!/usr/bin/env bash
# Runs the whole test suite (what README.md and .ci/run call). The tests use
# the real PostgreSQL and RabbitMQ: scripts/dev-env.sh makes them reachable
# first. Extra arguments go to `cargo test`.
#
# TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) is
# the server the tests create their databases on; TEST_AMQP_HOST (default
# 127.0.0.1:5672, user guest) the broker they create their vhosts on, with
# rabbitmqctl (run as root). Two tests stop and start the RabbitMQ
# application and the local PostgreSQL cluster (pg_ctlcluster), each in a
# test binary of its own. TEST_LOG=1 shows logs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/dev-env.sh

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

trap scripts/drop-test-templates.sh EXIT

cargo test --workspace "$@"
