#!/usr/bin/env bash
# vnic0 -> vnic1 throughput: snapnet against DPDK's vhost PMD (dpdk-testpmd
# io-forwarding between two net_vhost ports), driven by the same frontend
# (snapnet-bench pair), interleaved A B A B ... and compared by median.
#
# On this 2-vCPU machine one frontend thread (TX + RX on CPU 0) saturates at
# about the rate either backend reaches on a full core, so an uncapped run
# compares the frontend with itself. The backend's core is therefore capped
# with a cgroup CPU quota (default 25 % of CPU 1, 10 ms period): the backend
# is then the bottleneck and Mpps/core = rate / quota. Both backends get the
# same cap. Set CAP=100 for an uncapped (frontend-bound) run.
#
# Usage: scripts/bench-vs-testpmd.sh [rounds] [seconds]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SECS=${2:-3}
CAP=${CAP:-25}
SIZES=${SIZES:-"64 1500"}
bash scripts/install-prereqs.sh dpdk-dev build-essential pkg-config
cargo build --release --bin snapnet --bin snapnet-bench >/dev/null 2>&1 || cargo build --release --bin snapnet --bin snapnet-bench
SN=$PWD/target/release/snapnet
BENCH=$PWD/target/release/snapnet-bench
WORK=$(mktemp -d /tmp/snapnet-bench.XXXXXX)
CG=""
cleanup() {
    pkill -INT -f "$SN serve --config $WORK" 2>/dev/null || true
    pkill -f "file-prefix snb$$" 2>/dev/null || true
    sleep 0.3
    if [ -n "$CG" ] && [ -d "$CG" ]; then
        cat "$CG/cgroup.procs" 2>/dev/null | while read -r p; do echo "$p" > /sys/fs/cgroup/cpu/cgroup.procs 2>/dev/null || true; done
        rmdir "$CG" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

in_cgroup() { if [ -n "$CG" ]; then echo "sh -c 'echo \$\$ > $CG/cgroup.procs; exec \"\$0\" \"\$@\"'"; fi; }
if [ "$CAP" -lt 100 ]; then
    if [ -d /sys/fs/cgroup/cpu ] && [ -w /sys/fs/cgroup/cpu ]; then
        CG=/sys/fs/cgroup/cpu/snapnet-bench-$$
        mkdir -p "$CG"
        echo 10000 > "$CG/cpu.cfs_period_us"
        echo $((CAP * 100)) > "$CG/cpu.cfs_quota_us"
    elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        CG=/sys/fs/cgroup/snapnet-bench-$$
        mkdir -p "$CG"
        echo "$((CAP * 100)) 10000" > "$CG/cpu.max"
    else
        echo "no cgroup cpu controller: running uncapped" >&2
        CAP=100
    fi
fi

cat > "$WORK/sn.json" <<JSON
{"runtime_dir":"$WORK","vnics":[{"name":"vnic0","mac":"52:54:00:5a:00:01"},{"name":"vnic1","mac":"52:54:00:5a:00:02"}],
 "groups":[{"name":"default","policy":"dedicated","threads":1,"cpus":[1]}]}
JSON

start_capped() { # command... ; runs it inside the cgroup (if any) in the background
    if [ -n "$CG" ]; then
        sh -c 'echo $$ > "$0"/cgroup.procs; shift; exec "$@"' "$CG" x "$@" &
    else
        "$@" &
    fi
}

rate() { sed -n 's/.* rx_mpps=\([0-9.]*\).*/\1/p'; }

run_snapnet() {
    start_capped "$SN" serve --config "$WORK/sn.json" </dev/null >"$WORK/sn.log" 2>&1
    local pid=$!
    for _ in $(seq 50); do [ -S "$WORK/vnic1.sock" ] && break; sleep 0.1; done
    taskset -c 0 "$BENCH" pair --tx "$WORK/vnic0.sock" --rx "$WORK/vnic1.sock" --size "$1" --seconds "$SECS" | grep '^result' | rate
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}

run_testpmd() {
    rm -f "$WORK"/tp*.sock
    # --stats-period keeps testpmd from reading stdin; SIGINT stops it.
    start_capped dpdk-testpmd --no-pci --no-huge -m 256 --no-shconf --file-prefix "snb$$" --lcores '0@1,1@1' \
        --vdev "net_vhost0,iface=$WORK/tp0.sock" --vdev "net_vhost1,iface=$WORK/tp1.sock" -- \
        --forward-mode=io --auto-start --total-num-mbufs=16384 --stats-period 3600 </dev/null >"$WORK/tp.log" 2>&1
    local pid=$!
    # Connect once the ports are configured (earlier, testpmd resets the
    # connection); it then waits for the links, which our connection raises.
    for _ in $(seq 200); do grep -q "Checking link statuses" "$WORK/tp.log" 2>/dev/null && break; sleep 0.1; done
    # testpmd resets connections made while it is still starting its ports;
    # such a try fails at once: try again.
    local out=""
    for _ in $(seq 20); do
        out=$(taskset -c 0 "$BENCH" pair --tx "$WORK/tp0.sock" --rx "$WORK/tp1.sock" --size "$1" --seconds "$SECS" \
            --dst-mac 52:54:00:5a:00:02 2>>"$WORK/bench.err" | grep '^result' || true)
        [ -n "$out" ] && break
        sleep 0.5
    done
    echo "$out" | rate
    [ -n "${DEBUG:-}" ] && cat "$WORK/tp.log" "$WORK/bench.err" >&2
    kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "backend CPU cap: ${CAP}% of CPU 1; frontend: snapnet-bench pair on CPU 0; ${ROUNDS} interleaved rounds of ${SECS} s"
printf "%-6s %-8s %s\n" size backend "rounds (Mpps)"
for size in $SIZES; do
    sn_all=""; tp_all=""
    for r in $(seq "$ROUNDS"); do
        sn_all="$sn_all $(run_snapnet "$size")"
        tp_all="$tp_all $(run_testpmd "$size")"
    done
    printf "%-6s %-8s %s\n" "$size" snapnet "$sn_all"
    printf "%-6s %-8s %s\n" "$size" testpmd "$tp_all"
    sn=$(echo "$sn_all" | median); tp=$(echo "$tp_all" | median)
    awk -v s="$size" -v a="$sn" -v b="$tp" -v cap="$CAP" 'BEGIN {
        printf "result size=%d snapnet_mpps=%.3f testpmd_mpps=%.3f snapnet_mpps_per_core=%.2f testpmd_mpps_per_core=%.2f ratio=%.3f cap_pct=%d\n",
            s, a, b, a*100/cap, b*100/cap, (b > 0 ? a/b : 0), cap }'
done
