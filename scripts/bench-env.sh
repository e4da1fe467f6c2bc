# Sourced by the benchmark scripts (scripts/bench*.sh), from the repository
# root: makes the services reachable, points the benchmark's databases at
# TEST_DATABASE_URL (default: the local server), drops the test templates
# on exit, and defines `release_bin NAME`, the absolute path of a release
# binary of this workspace (CARGO_TARGET_DIR honoured), for the benchmarks
# that run one as a child process.
scripts/dev-env.sh
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
trap scripts/drop-test-templates.sh EXIT

release_bin() {
    local target_dir="${CARGO_TARGET_DIR:-target}"
    case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
    echo "$target_dir/release/$1"
}
