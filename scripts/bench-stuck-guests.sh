#!/usr/bin/env bash
# Tenant isolation of the frame pool, measured: a steady vNIC pair's rate
# (64 B, vnic steady0 -> steady1) alone, and while two other vNICs flood two
# guests that post no RX buffers (one of 1 queue pair, one of 16, as a stuck
# or paused VM), interleaved rounds (A B A B ...), medians, and the median
# of the rounds' own ratios.
# The stuck guests stay connected throughout (both phases poll the same
# engines); only the flood to them differs between phases. The daemon
# runs on CPU 1, the bench tool (steady pair and flood thread) on CPU 0.
# The flooders send FLOOD_PPS packets/s each (default 20000), paced by the
# bench's flood thread in 1 ms steps (so it sleeps in between and leaves
# CPU 0 to the steady pair) and capped by their vNICs' egress limit: enough
# to keep frames waiting on all 17 stuck queues (the 1-queue guest's link
# fills before its 100 ms stall drop), little enough that the measurement
# shows what the stuck guests do to the pool and the shared engine rather
# than the CPU spent carrying the flood itself. FLOOD_PPS=200000 adds that
# cost (the flood is then 6 % of the steady pair's packets); FLOOD_PPS=0:
# unpaced and unlimited.
#
# Usage: scripts/bench-stuck-guests.sh [rounds] [seconds]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SECS=${2:-3}
FLOOD_PPS=${FLOOD_PPS:-20000}
cargo build --release --bins >/dev/null 2>&1
SN=$PWD/target/release/snapnet
BENCH=$PWD/target/release/snapnet-bench
WORK=$(mktemp -d /tmp/snapnet-bench-stuck.XXXXXX)
SN_PID=""
cleanup() {
    if [ -n "$SN_PID" ]; then kill -INT "$SN_PID" 2>/dev/null || true; wait "$SN_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

LIMIT=""
[ "$FLOOD_PPS" != 0 ] && LIMIT=", \"tx_limit\": { \"packets_per_sec\": $FLOOD_PPS }"
vnic() { echo "{ \"name\": \"$1\", \"mac\": \"$2\", \"queue_pairs\": $3 ${4:-} }"; }
cat > "$WORK/config.json" <<JSON
{ "runtime_dir": "$WORK",
  "vnics": [ $(vnic steady0 02:00:00:00:00:10 1), $(vnic steady1 02:00:00:00:00:11 1),
             $(vnic flood0 02:00:00:00:00:20 1 "$LIMIT"), $(vnic flood1 02:00:00:00:00:21 1 "$LIMIT"),
             $(vnic stuck1 02:00:00:00:00:30 1), $(vnic stuck16 02:00:00:00:00:31 16) ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1, "cpus": [1] } ] }
JSON
"$SN" serve --config "$WORK/config.json" </dev/null >"$WORK/sn.log" 2>&1 &
SN_PID=$!
for _ in $(seq 100); do grep -q running "$WORK/sn.log" 2>/dev/null && break; sleep 0.05; done
grep -q running "$WORK/sn.log" || { echo "snapnet did not start" >&2; cat "$WORK/sn.log" >&2; exit 1; }

taskset -c 0 "$BENCH" isolation --steady-tx "$WORK/steady0.sock" --steady-rx "$WORK/steady1.sock" \
    --flood "$WORK/flood0.sock,$WORK/flood1.sock" \
    --stuck "$WORK/stuck1.sock:1,$WORK/stuck16.sock:16" \
    --flood-pps "$FLOOD_PPS" --rounds "$ROUNDS" --seconds "$SECS"
for v in steady1 stuck16; do
    echo "== $v"; "$SN" ctl --socket "$WORK/control.sock" vnic stats "$v" || true
done
