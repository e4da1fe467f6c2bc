#!/usr/bin/env bash
# Regenerates crates/domain/src/schema.rs from the migrations with the diesel
# CLI (`cargo install diesel_cli --no-default-features --features postgres`),
# in a scratch database that is dropped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
server="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
scratch="ot_schemagen_$$"
export DATABASE_URL="${server%/*}/$scratch"
trap 'psql "$server" -qc "DROP DATABASE IF EXISTS $scratch" >/dev/null' EXIT
# Not `diesel database setup`: it would add its own initial-setup migration.
psql "$server" -qc "CREATE DATABASE $scratch"
diesel migration run --migration-dir migrations
diesel print-schema > crates/domain/src/schema.rs
echo "regenerated crates/domain/src/schema.rs" >&2
