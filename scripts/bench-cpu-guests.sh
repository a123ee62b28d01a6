#!/usr/bin/env bash
# snapnet's CPU with two real QEMU guests (TCG) at a light, steady load: guest
# a pings guest b every 10 ms through snapnet (a request and a reply: about
# 200 frames/s) while snapnet's CPU time (utime + stime of all its threads,
# /proc/PID/stat) is measured over a window, per engine-group policy. Also
# the same window with both guests up and silent ("idle").
#
# Usage: scripts/bench-cpu-guests.sh (as root; CPU-heavy: hold
#   /tmp/snapnet-cpu.lock around it on a shared machine)
# Environment:
#   POLICIES="compacting spreading"  groups to measure
#   WINDOW=20                        seconds measured per point
#   INTERVAL=0.01                    ping interval inside guest a
#   SNAPNET=target/release/snapnet   binary (another build gives a "before")
#   QEMU=qemu-system-x86_64          QEMU binary
# Output: one line per policy and point, e.g.
#   compacting ping: 0.41 % of a core (window 20.0 s, 1998/2000 replies, rtt 1.2 ms)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
POLICIES=${POLICIES:-compacting spreading}
WINDOW=${WINDOW:-20}
INTERVAL=${INTERVAL:-0.01}
QEMU=${QEMU:-qemu-system-x86_64}

bash scripts/install-prereqs.sh protobuf-compiler qemu-system-x86 procps
if [ -z "${SNAPNET:-}" ]; then
    cargo build --release --bin snapnet >/dev/null 2>&1 || cargo build --release --bin snapnet
    SNAPNET=$ROOT/target/release/snapnet
fi
eval "$(bash qemu-scripts/build-guest.sh --quiet | grep -E '^GUEST_(KERNEL|INITRD)=')"

WORK=$(mktemp -d /tmp/snapnet-cpuguests.XXXXXX)
SN_PID=""
stop_all() {
    local f
    for f in "$WORK"/*.pid; do
        [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
    if [ -n "$SN_PID" ]; then
        kill -INT "$SN_PID" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$SN_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SN_PID" 2>/dev/null || true
        wait "$SN_PID" 2>/dev/null || true
        SN_PID=""
    fi
    wait 2>/dev/null || true
}
cleanup() {
    stop_all
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
HZ=$(getconf CLK_TCK)

# CPU ticks (utime + stime) of process $1 so far.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Waits until guest log $1 shows $2, at most $3 seconds.
wait_log() {
    local i
    for i in $(seq $(($3 * 10))); do
        grep -aq "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "no '$2' in $1 within $3 s" >&2
    tail -5 "$1" >&2 || true
    return 1
}

guest() { # name socket mac cmdline
    # In a subshell that outlives QEMU, so killing QEMU at the end is not
    # reported as a killed job.
    (bash qemu-scripts/launch-guest.sh --socket "$2" --mac "$3" --qemu "$QEMU" --accel tcg \
        --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" --cmdline "$4" \
        --serial-log "$WORK/$1.log" --timeout $((3 * WINDOW + 90)) --pidfile "$WORK/$1.pid" \
        >"$WORK/$1.qemu.log" 2>&1 || true) &
}

# Measures snapnet's CPU over WINDOW seconds; prints it in % of a core.
measure() {
    local t0 c0 t1 c1
    t0=$(date +%s.%N)
    c0=$(ticks "$SN_PID")
    sleep "$WINDOW"
    c1=$(ticks "$SN_PID")
    t1=$(date +%s.%N)
    awk -v c="$((c1 - c0))" -v hz="$HZ" -v a="$t0" -v b="$t1" \
        'BEGIN { printf "%.2f %% of a core (window %.1f s)", 100 * c / hz / (b - a), b - a }'
}

run_policy() { # policy
    local policy=$1 threads="" count idle ping res
    [ "$policy" = spreading ] || threads=', "threads": 1'
    rm -f "$WORK"/*.sock "$WORK"/*.log
    cat >"$WORK/sn.json" <<JSON
{"runtime_dir":"$WORK","vnics":[{"name":"vnic0","mac":"52:54:00:5a:00:01"},{"name":"vnic1","mac":"52:54:00:5a:00:02"}],
 "groups":[{"name":"g","policy":"$policy" $threads}]}
JSON
    "$SNAPNET" serve --config "$WORK/sn.json" </dev/null >"$WORK/sn.out" 2>&1 &
    SN_PID=$!
    for _ in $(seq 100); do [ -S "$WORK/vnic1.sock" ] && break; sleep 0.1; done
    count=$(awk -v w="$WINDOW" -v i="$INTERVAL" 'BEGIN { printf "%d", (w + 10) / i }')
    # b only answers; a waits for b, stays silent for the idle window, then
    # pings for longer than the ping window.
    guest b "$WORK/vnic1.sock" 52:54:00:5a:00:02 \
        "snapnet.ip=10.0.0.2/24 snapnet.tests=hold snapnet.hold=$((3 * WINDOW + 60))"
    guest a "$WORK/vnic0.sock" 52:54:00:5a:00:01 \
        "snapnet.ip=10.0.0.1/24 snapnet.peer=10.0.0.2 snapnet.tests=hold,ping snapnet.hold=$((WINDOW + 6)) snapnet.ping_count=$count snapnet.ping_interval=$INTERVAL"
    wait_log "$WORK/a.log" SNAPNET-READY 60
    wait_log "$WORK/b.log" SNAPNET-READY 60
    # Boot-time traffic (neighbour discovery) settles first.
    sleep 3
    idle=$(measure)
    echo "$policy idle: $idle"
    # a's hold ends WINDOW + 6 s after its READY; wait_peer and ping follow.
    sleep 8
    ping=$(measure)
    wait_log "$WORK/a.log" "SNAPNET-RESULT test=ping" $((count / 50 + 60)) || true
    res=$(grep -a "SNAPNET-RESULT test=ping" "$WORK/a.log" | tail -1 | tr -d '\r')
    echo "$policy ping every ${INTERVAL}s: $ping; guest: ${res#SNAPNET-RESULT }"
    stop_all
}

echo "snapnet: $SNAPNET; QEMU: $("$QEMU" --version | head -1)"
for p in $POLICIES; do
    run_policy "$p"
done
