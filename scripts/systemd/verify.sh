#!/usr/bin/env bash
# Checks the systemd units of order-timeout without installing anything:
#
#   1. `systemd-analyze verify` on order-timeout-relay.service,
#      order-timeout-serve.service, order-timeout-reconcile.service and its
#      .timer, and an instance of order-timeout-worker@.service, in a
#      throw-away root (--root) that
#      holds the units at /etc/systemd/system, the real binaries at
#      /usr/local/bin (verify insists ExecStart= is executable) and a copy of
#      the host's /usr/lib/systemd/system (for the targets they depend on).
#      Fails on a non-zero exit OR on any message: verify exits 0 on unknown
#      keys and unparsable values, which it only prints.
#   2. `systemd-analyze security --offline=yes` on each service (not the
#      timer: security applies to services only), printing each overall
#      exposure score (the whole table with VERBOSE=1), and failing when a
#      score exceeds SECURITY_THRESHOLD (default 2.0, on systemd's 0-10 scale,
#      lower is better).
#
# Works without systemd as PID 1 (containers, CI). Binaries: $ORDER_TIMEOUT_WORKER
# and $ORDER_PRODUCER, else order-timeout-worker / order-producer on PATH, else
# this checkout's target/release (build them first: cargo build --release).
#
# Exit 0 all good; 1 a check failed; 2 something needed is missing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
threshold="${SECURITY_THRESHOLD:-2.0}"
# systemd-analyze takes the threshold in tenths (0-100).
tenths="$(awk -v t="$threshold" 'BEGIN { if (t !~ /^[0-9]+(\.[0-9])?$/ || t > 10) exit 1; printf "%d", t * 10 + 0.5 }')" ||
    { echo "verify.sh: SECURITY_THRESHOLD must be 0.0 to 10.0 (one decimal), got $threshold" >&2; exit 2; }
units=(order-timeout-relay.service order-timeout-worker@.service order-timeout-serve.service
    order-timeout-reconcile.service order-timeout-reconcile.timer)
# What gets checked: templates through an instance.
check=(order-timeout-relay.service order-timeout-worker@1.service order-timeout-serve.service
    order-timeout-reconcile.service order-timeout-reconcile.timer)
# systemd-analyze security rates services only.
services=()
for u in "${check[@]}"; do case "$u" in *.service) services+=("$u") ;; esac; done

die() { echo "verify.sh: $*" >&2; exit 2; }

command -v systemd-analyze >/dev/null ||
    die "systemd-analyze not found; install systemd (e.g. apt-get install systemd)"
version="$(systemd-analyze --version | awk 'NR==1 {print $2}')"
echo "systemd $version"
# %d (credentials directory) needs systemd >= 248; security --offline >= 250.
[ "$version" -ge 250 ] 2>/dev/null ||
    die "systemd $version is too old: the units need >= 248 (%d, LoadCredential=), this script >= 250 (security --offline)"

find_bin() { # NAME ENVVAR
    local v="${!2:-}"
    if [ -n "$v" ]; then echo "$v"; return; fi
    if command -v "$1" >/dev/null; then command -v "$1"; return; fi
    local target_dir="${CARGO_TARGET_DIR:-target}"
    case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
    echo "$target_dir/release/$1"
}
worker="$(find_bin order-timeout-worker ORDER_TIMEOUT_WORKER)"
producer="$(find_bin order-producer ORDER_PRODUCER)"
for b in "$worker" "$producer"; do
    [ -x "$b" ] || die "$b is missing or not executable: build it (cargo build --release) or set ORDER_TIMEOUT_WORKER / ORDER_PRODUCER"
done

sysunits=/usr/lib/systemd/system
[ -d "$sysunits" ] || sysunits=/lib/systemd/system
[ -d "$sysunits" ] || die "no system unit directory (/usr/lib/systemd/system) to copy"

root="$(mktemp -d "${TMPDIR:-/tmp}/order-timeout-systemd.XXXXXX")"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/usr/local/bin" "$root/etc/order-timeout"
cp -a "$sysunits" "$root/usr/lib/systemd/system"
for u in "${units[@]}"; do cp "$here/$u" "$root/etc/systemd/system/$u"; done
# Hard links when on the same filesystem (no 15 MB copies), else copies.
ln "$worker" "$root/usr/local/bin/order-timeout-worker" 2>/dev/null ||
    cp "$worker" "$root/usr/local/bin/order-timeout-worker"
ln "$producer" "$root/usr/local/bin/order-producer" 2>/dev/null ||
    cp "$producer" "$root/usr/local/bin/order-producer"
install -m 0600 "$here/order-timeout.env.example" "$root/etc/order-timeout/order-timeout.env"

failed=0

echo "== systemd-analyze verify"
set +e
out="$(systemd-analyze verify --man=no --generators=no --root="$root" "${check[@]}" 2>&1)"
rc=$?
set -e
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out" | sed "s|$root||g"
    echo "verify: FAILED (exit $rc${out:+, messages above})"
    failed=1
else
    echo "verify: OK (${check[*]}: no messages)"
fi

echo "== systemd-analyze security --offline=yes (threshold $threshold)"
for u in "${services[@]}"; do
    set +e
    out="$(systemd-analyze security --offline=yes --root="$root" --threshold="$tenths" "$u" 2>&1)"
    rc=$?
    set -e
    if [ -n "${VERBOSE:-}" ]; then
        printf '%s\n' "$out" | sed "s|$root||g"
    fi
    score="$(printf '%s\n' "$out" | grep 'Overall exposure level' || true)"
    if [ -z "$score" ]; then
        printf '%s\n' "$out" | sed "s|$root||g"
        echo "security $u: no score (exit $rc)"
        failed=1
    elif [ "$rc" -ne 0 ]; then
        echo "$score   FAILED: above $threshold"
        failed=1
    else
        echo "$score"
    fi
done

if [ "$failed" -ne 0 ]; then
    echo "verify.sh: FAILED"
    exit 1
fi
echo "verify.sh: OK"
