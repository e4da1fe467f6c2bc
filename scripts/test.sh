#!/usr/bin/env bash
# Runs the whole test suite (what README.md and .ci/run call). The tests use
# the real PostgreSQL (and later RabbitMQ): scripts/dev-env.sh makes them
# reachable first. Extra arguments go to `cargo test`.
#
# TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) is
# the server the tests create their databases on; TEST_LOG=1 shows logs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/dev-env.sh

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

drop_templates() {
    # Each test drops its own database; the migrated templates they were
    # copied from (ot_tmpl_<hash>) are dropped here, once the suite is done.
    local db
    for db in $(psql "$TEST_DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'ot\_tmpl\_%'" 2>/dev/null); do
        psql "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
    done
}
trap drop_templates EXIT

cargo test --workspace "$@"
