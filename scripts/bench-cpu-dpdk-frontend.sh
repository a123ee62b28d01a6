#!/usr/bin/env bash
# snapnet's CPU at the two points a DPDK virtio-user frontend can give (it
# cannot pace): idle (both ports attached, nothing sent) and full load (a
# fixed population of frames looping vnic0 <-> vnic1 through one testpmd in
# mac-forward mode, primed with `start tx_first 8`). DPDK's virtio-user does
# not negotiate EVENT_IDX, so this checks the NO_NOTIFY paths of sleeping
# and waking. Per engine-group policy; the backend on CPU 1, testpmd on 0.
#
# Usage: scripts/bench-cpu-dpdk-frontend.sh (as root; CPU-heavy: hold
#   /tmp/snapnet-cpu.lock around it on a shared machine)
# Environment: POLICIES="compacting spreading", SECS=5 per point,
#   SNAPNET=target/release/snapnet (another build gives a "before").
# Output: "<policy> idle: X % of a core", "<policy> full: Y % of a core;
#   testpmd received Z Mframes/s" (over its whole forwarding run).
set -euo pipefail
cd "$(dirname "$0")/.."
POLICIES=${POLICIES:-compacting spreading}
SECS=${SECS:-5}
bash scripts/install-prereqs.sh protobuf-compiler dpdk-dev
if [ -z "${SNAPNET:-}" ]; then
    cargo build --release --bin snapnet >/dev/null 2>&1 || cargo build --release --bin snapnet
    SNAPNET=$PWD/target/release/snapnet
fi
WORK=$(mktemp -d /tmp/snapnet-cpudpdk.XXXXXX)
SN_PID="" TP_PID=""
stop_all() {
    if [ -n "$TP_PID" ]; then
        kill -9 "$TP_PID" 2>/dev/null || true
        wait "$TP_PID" 2>/dev/null || true
        TP_PID=""
    fi
    exec 3>&- 2>/dev/null || true
    if [ -n "$SN_PID" ]; then
        kill -INT "$SN_PID" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$SN_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SN_PID" 2>/dev/null || true
        wait "$SN_PID" 2>/dev/null || true
        SN_PID=""
    fi
}
trap 'stop_all; rm -rf "$WORK"' EXIT INT TERM
HZ=$(getconf CLK_TCK)

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# snapnet's CPU over SECS seconds, in % of a core.
measure() {
    local t0 c0 t1 c1
    t0=$(date +%s.%N)
    c0=$(ticks "$SN_PID")
    sleep "$SECS"
    c1=$(ticks "$SN_PID")
    t1=$(date +%s.%N)
    awk -v c="$((c1 - c0))" -v hz="$HZ" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", 100 * c / hz / (b - a) }'
}

# Frames testpmd received in all, from the summary it prints at `stop`
# (its output reaches the log file only as it exits).
forwarded() {
    sed -n '/Accumulated forward statistics/,/^ *+++/p' "$WORK/tp.log" |
        sed -n 's/.*RX-packets: *\([0-9]*\).*/\1/p' | head -1
}

run_policy() {
    local policy=$1 threads="" idle full t0 t1
    [ "$policy" = spreading ] || threads=', "threads": 1'
    rm -f "$WORK"/*.sock
    cat >"$WORK/sn.json" <<JSON
{"runtime_dir":"$WORK","vnics":[{"name":"vnic0","mac":"52:54:00:5a:00:01"},{"name":"vnic1","mac":"52:54:00:5a:00:02"}],
 "groups":[{"name":"g","policy":"$policy", "cpus": [1] $threads}]}
JSON
    "$SNAPNET" serve --config "$WORK/sn.json" </dev/null >"$WORK/sn.out" 2>&1 &
    SN_PID=$!
    for _ in $(seq 100); do [ -S "$WORK/vnic1.sock" ] && break; sleep 0.1; done
    rm -f "$WORK/tp.in"
    mkfifo "$WORK/tp.in"
    dpdk-testpmd --no-pci --no-huge -m 256 --no-shconf --file-prefix "cpd$$" --lcores '0@0,1@0' \
        --vdev "net_virtio_user0,path=$WORK/vnic0.sock,mac=52:54:00:5a:00:01,queue_size=1024" \
        --vdev "net_virtio_user1,path=$WORK/vnic1.sock,mac=52:54:00:5a:00:02,queue_size=1024" -- \
        -i --forward-mode=mac --total-num-mbufs=16384 \
        --eth-peer=0,52:54:00:5a:00:02 --eth-peer=1,52:54:00:5a:00:01 <"$WORK/tp.in" >"$WORK/tp.log" 2>&1 &
    TP_PID=$!
    exec 3>"$WORK/tp.in"
    for _ in $(seq 100); do grep -q "testpmd>" "$WORK/tp.log" 2>/dev/null && break; sleep 0.1; done
    sleep 2
    idle=$(measure)
    echo "$policy idle: $idle % of a core"
    echo "start tx_first 8" >&3
    t0=$(date +%s.%N)
    sleep 2
    full=$(measure)
    echo "stop" >&3
    t1=$(date +%s.%N)
    echo "quit" >&3
    for _ in $(seq 50); do kill -0 "$TP_PID" 2>/dev/null || break; sleep 0.1; done
    awk -v p="$policy" -v c="$full" -v n="$(forwarded)" -v a="$t0" -v b="$t1" \
        'BEGIN { printf "%s full: %s %% of a core; testpmd received %.2f Mframes/s\n", p, c, n / (b - a) / 1e6 }'
    stop_all
}

echo "snapnet: $SNAPNET; $(dpdk-testpmd --version 2>/dev/null | head -1 || true)"
for p in $POLICIES; do
    run_policy "$p"
done
