#!/usr/bin/env bash
# Drops the migrated template databases (ot_tmpl_<hash>) that the tests and
# benchmarks copy their per-test databases from. Each test drops its own
# database; the templates are dropped here once a suite is done.
set -uo pipefail
url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
for db in $(psql "$url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'ot\_tmpl\_%'" 2>/dev/null); do
    psql "$url" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
done
