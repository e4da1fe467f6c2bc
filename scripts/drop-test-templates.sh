#!/usr/bin/env bash
# Drops the migrated template databases (ot_tmpl_<hash>) that the tests and
# benchmarks copy their per-test databases from. Each test drops its own
# database; the templates are dropped here once a suite is done, but only
# when no other test process still uses one: each holds a shared advisory
# lock (domain::testing::TEMPLATE_IN_USE_KEY) for its life, and this script
# drops nothing unless it can take that lock exclusively.
set -uo pipefail
url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
in_use_key=8031148989165366273
templates="$(psql "$url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'ot\_tmpl\_%'" 2>/dev/null)"
[ -n "$templates" ] || exit 0
{
    echo "SELECT pg_try_advisory_lock($in_use_key) AS free \\gset"
    echo "\\if :free"
    for db in $templates; do echo "DROP DATABASE IF EXISTS \"$db\";"; done
    echo "\\else"
    echo "\\echo 'test templates kept: another test suite is using them'"
    echo "\\endif"
} | psql "$url" -q >/dev/null 2>&1 || true
