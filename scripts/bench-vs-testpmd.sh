#!/usr/bin/env bash
# vnic0 <-> vnic1 switching rate: snapnet against DPDK's vhost PMD
# (dpdk-testpmd io-forwarding between two net_vhost ports), driven by the same
# frontend, interleaved (A B A B ..., every other round in reverse order) and
# compared by median.
#
# FRONTEND=dpdk (default) drives both backends the way a DPDK guest would:
# one dpdk-testpmd process on CPU 1 with two virtio-user ports at their
# default devargs (MRG_RXBUF and IN_ORDER negotiated when the backend offers
# them; PACKED=1 adds packed_vq=1, MRG=0 adds mrg_rxbuf=0), queue_size=1024,
# in --forward-mode=mac, primed with `start tx_first 8` once both ports are
# up, so a fixed population of frames loops vnic0 -> vnic1 -> vnic0 through
# the backend, which runs alone on CPU 0. The rate is the frames received by
# the two ports per second. Size `rtt` primes one frame per port (burst 1):
# its figure is the time one frame takes to cross the backend and the
# frontend once (2 / rate), the single-frame latency.
# Each round records the vCPU placement (cache-line ping-pong time between
# CPU 0 and 1, before and after: FACTS.md) and medians are also printed per
# placement. With the DPDK frontend, each snapnet round also prints where
# the backend's time went: every engine's busy time per unit of its work
# over the same interval (`snapnet-bench engine-cost` on two samples of
# `snapnet ctl --json group stats default`), and their sum per frame.
#
# FRONTEND=own drives them with snapnet-bench pair (our frontend, TX + RX on
# CPU 0). One frontend thread saturates at about the rate either backend
# reaches on a full core, so the backend's core is capped with a cgroup CPU
# quota (CAP, default 25 % of CPU 1, 10 ms period): the backend is then the
# bottleneck and Mpps/core = rate / quota. CAP=100 runs uncapped.
#
# Usage: scripts/bench-vs-testpmd.sh [rounds] [seconds]   (as root)
#   env: FRONTEND=dpdk|own  SIZES="64 1500 rtt"  PACKED=1  MRG=0  CAP=25
#        BASE=path/to/an/older/snapnet: a third backend in every round, and
#        the ratio of this build to it (before/after a change, same run)
#        THIS=path/to/a/snapnet: the binary to measure instead of this
#        checkout's release build (then nothing is built but snapnet-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SECS=${2:-3}
FRONTEND=${FRONTEND:-dpdk}
if [ "$FRONTEND" = dpdk ]; then CAP=100; SIZES=${SIZES:-"64 1500 rtt"}; else CAP=${CAP:-25}; SIZES=${SIZES:-"64 1500"}; fi
bash scripts/install-prereqs.sh protobuf-compiler dpdk-dev build-essential pkg-config
if [ -n "${THIS:-}" ]; then
    cargo build --release --bin snapnet-bench >/dev/null 2>&1 || cargo build --release --bin snapnet-bench
else
    cargo build --release --bin snapnet --bin snapnet-bench >/dev/null 2>&1 || cargo build --release --bin snapnet --bin snapnet-bench
fi
SN=${THIS:-$PWD/target/release/snapnet}
BENCH=$PWD/target/release/snapnet-bench
WORK=$(mktemp -d /tmp/snapnet-bench.XXXXXX)
CG=""
cleanup() {
    pkill -INT -f "$SN serve --config $WORK" 2>/dev/null || true
    pkill -f "file-prefix sn[bf]$$" 2>/dev/null || true
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

# The backend's CPU and the frontend's (own: the frontend on 0, as before).
if [ "$FRONTEND" = dpdk ]; then BCPU=0; FCPU=1; else BCPU=1; FCPU=0; fi
MAC0=52:54:00:5a:00:01
MAC1=52:54:00:5a:00:02
cat > "$WORK/sn.json" <<JSON
{"runtime_dir":"$WORK","vnics":[{"name":"vnic0","mac":"$MAC0"},{"name":"vnic1","mac":"$MAC1"}],
 "groups":[{"name":"default","policy":"dedicated","threads":1,"cpus":[$BCPU]}]}
JSON

start_capped() { # command... ; runs it inside the cgroup (if any) in the background
    if [ -n "$CG" ]; then
        sh -c 'echo $$ > "$0"/cgroup.procs; shift; exec "$@"' "$CG" x "$@" &
    else
        "$@" &
    fi
}

rate() { sed -n 's/.* rx_mpps=\([0-9.]*\).*/\1/p'; }

run_snapnet_own() {
    start_capped "$SN" serve --config "$WORK/sn.json" </dev/null >"$WORK/sn.log" 2>&1
    local pid=$!
    for _ in $(seq 50); do [ -S "$WORK/vnic1.sock" ] && break; sleep 0.1; done
    taskset -c "$FCPU" "$BENCH" pair --tx "$WORK/vnic0.sock" --rx "$WORK/vnic1.sock" --size "$1" --seconds "$SECS" | grep '^result' | rate
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}

run_testpmd_own() {
    rm -f "$WORK"/tp*.sock
    # --stats-period keeps testpmd from reading stdin; SIGINT stops it.
    start_capped dpdk-testpmd --no-pci --no-huge -m 256 --no-shconf --file-prefix "snb$$" --lcores "0@$BCPU,1@$BCPU" \
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
        out=$(taskset -c "$FCPU" "$BENCH" pair --tx "$WORK/tp0.sock" --rx "$WORK/tp1.sock" --size "$1" --seconds "$SECS" \
            --dst-mac 52:54:00:5a:00:02 2>>"$WORK/bench.err" | grep '^result' || true)
        [ -n "$out" ] && break
        sleep 0.5
    done
    echo "$out" | rate
    [ -n "${DEBUG:-}" ] && cat "$WORK/tp.log" "$WORK/bench.err" >&2
    kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
}


# ---- DPDK virtio-user frontend -------------------------------------------

# Starts the frontend testpmd against sockets $1 and $2, primes it for size
# $3 and prints the two ports' received frames per second over $SECS.
dpdk_frontend() {
    local s0=$1 s1=$2 size=$3 fifo="$WORK/fe.in" log="$WORK/fe.log"
    local extra=""
    [ "${PACKED:-0}" = 1 ] && extra="$extra,packed_vq=1"
    [ "${MRG:-1}" = 0 ] && extra="$extra,mrg_rxbuf=0"
    rm -f "$fifo"; mkfifo "$fifo"
    taskset -c "$FCPU" dpdk-testpmd --no-pci --no-huge -m 256 --no-shconf --file-prefix "snf$$" \
        --lcores "0@$FCPU,1@$FCPU" \
        --vdev "net_virtio_user0,path=$s0,mac=$MAC0,queue_size=${QSIZE:-1024}$extra" \
        --vdev "net_virtio_user1,path=$s1,mac=$MAC1,queue_size=${QSIZE:-1024}$extra" -- \
        -i --forward-mode=mac --eth-peer=0,$MAC1 --eth-peer=1,$MAC0 \
        --txd=${QSIZE:-1024} --rxd=${QSIZE:-1024} --total-num-mbufs=16384 <"$fifo" >"$log" 2>&1 &
    local pid=$!
    exec 7>"$fifo"
    # tx_first sends `bursts` bursts of 32 (testpmd's default burst) per port.
    local prime="set txpkts $size" bursts=8
    [ "$size" = rtt ] && { prime="set burst 1"; bursts=1; }
    sleep 2
    { echo "$prime"; echo "start tx_first $bursts"; } >&7
    sleep 1
    echo "clear port stats all" >&7
    local t0; t0=$(date +%s.%N)
    [ -n "${SAMPLE:-}" ] && $SAMPLE > "$WORK/stats0.json" 2>/dev/null
    sleep "$SECS"
    echo "show port stats all" >&7
    local t1; t1=$(date +%s.%N)
    [ -n "${SAMPLE:-}" ] && $SAMPLE > "$WORK/stats1.json" 2>/dev/null
    sleep 0.3
    { echo "stop"; echo "quit"; } >&7
    exec 7>&-
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
    [ -n "${DEBUG:-}" ] && cat "$log" >&2
    # The "show" after the clear: RX-packets of both ports (not the totals "stop" prints).
    awk -v t0="$t0" -v t1="$t1" '/#+ NIC statistics for port/ {port = 1; next}
        port && /RX-packets:/ {n += $2; port = 0} END {printf "%.4f\n", n / (t1 - t0) / 1e6}' "$log"
}

run_snapnet_dpdk() {
    "$SN" serve --config "$WORK/sn.json" </dev/null >"$WORK/sn.log" 2>&1 &
    local pid=$!
    for _ in $(seq 50); do [ -S "$WORK/vnic1.sock" ] && break; sleep 0.1; done
    rm -f "$WORK"/stats*.json
    SAMPLE="$SN ctl --socket $WORK/control.sock --json group stats default" \
        dpdk_frontend "$WORK/vnic0.sock" "$WORK/vnic1.sock" "$1"
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    # Where the time went (an older build without the accounting: nothing).
    "$BENCH" engine-cost --before "$WORK/stats0.json" --after "$WORK/stats1.json" \
        --seconds "$SECS" 2>/dev/null | sed -n 's/^result //p' > "$WORK/cost" || true
}

run_base_dpdk() { SN=$BASE run_snapnet_dpdk "$1"; }
run_base_own() { SN=$BASE run_snapnet_own "$1"; }

run_testpmd_dpdk() {
    rm -f "$WORK"/tp*.sock
    dpdk-testpmd --no-pci --no-huge -m 256 --no-shconf --file-prefix "snb$$" --lcores "0@$BCPU,1@$BCPU" \
        --vdev "net_vhost0,iface=$WORK/tp0.sock" --vdev "net_vhost1,iface=$WORK/tp1.sock" -- \
        --forward-mode=io --auto-start --total-num-mbufs=16384 --txd=1024 --rxd=1024 \
        --stats-period 3600 </dev/null >"$WORK/tp.log" 2>&1 &
    local pid=$!
    for _ in $(seq 200); do grep -q "Checking link statuses" "$WORK/tp.log" 2>/dev/null && break; sleep 0.1; done
    sleep 0.5
    dpdk_frontend "$WORK/tp0.sock" "$WORK/tp1.sock" "$1"
    kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
}

# ---- rounds ----------------------------------------------------------------

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else if (NR) print (a[NR/2]+a[NR/2+1])/2; else print 0}'; }
bounce() { "$BENCH" pingpong --cpu-a 0 --cpu-b 1 --trips 20000 --samples 5 | sed -n 's/.*one_way_ns=\([0-9]*\).*/\1/p'; }
# A round is "near" when both bounces were under 250 ns, "far" when both were
# over, "mixed" when the placement changed within it.
placement() { awk -v a="$1" -v b="$2" 'BEGIN { if (a < 250 && b < 250) print "near"; else if (a >= 250 && b >= 250) print "far"; else print "mixed" }'; }

# Prints "rate placement before_ns after_ns" for one run of backend $1 at size $2.
one_round() {
    local before after rate
    before=$(bounce)
    rate=$("run_$1_$FRONTEND" "$2")
    after=$(bounce)
    echo "${rate:-0} $(placement "$before" "$after") $before $after"
}

echo "frontend: $FRONTEND on CPU $FCPU; backend on CPU $BCPU (cap ${CAP}%); ${ROUNDS} interleaved rounds of ${SECS} s"
[ "$FRONTEND" = dpdk ] && echo "virtio-user devargs: queue_size=1024${PACKED:+ packed_vq=1}${MRG:+ mrg_rxbuf=$MRG}"
printf "%-6s %-8s %s\n" size backend "rounds: Mpps (placement, ping-pong ns before/after)"
for size in $SIZES; do
    declare -A all=()
    for r in $(seq "$ROUNDS"); do
        # Every other round in the reverse order: the first backend of a
        # round can read lower than the others (measured up to 25 % on an
        # EPYC VM), and a fixed order would charge that to one of them.
        order="snapnet testpmd ${BASE:+base}"
        [ $((r % 2)) = 0 ] && order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')
        for b in $order; do
            rm -f "$WORK/cost"
            read -r rate where nsb nsa < <(one_round "$b" "$size")
            all[$b]="${all[$b]:-} $rate"
            all[$b.$where]="${all[$b.$where]:-} $rate"
            printf "%-6s %-8s round %d: %s Mpps (%s, %s/%s ns)\n" "$size" "$b" "$r" "$rate" "$where" "$nsb" "$nsa"
            if [ -s "$WORK/cost" ]; then
                printf "%-6s %-8s         engine cost: %s\n" "$size" "$b" "$(cat "$WORK/cost")"
                ns=$(sed -n 's/.*busy_ns_per_frame=\([0-9.]*\).*/\1/p' "$WORK/cost")
                all[$b.cost]="${all[$b.cost]:-} $ns"
            fi
        done
    done
    for where in all near far; do
        key_s=snapnet; key_t=testpmd
        [ "$where" != all ] && { key_s=snapnet.$where; key_t=testpmd.$where; }
        [ -z "${all[$key_s]:-}" ] || [ -z "${all[$key_t]:-}" ] && continue
        sn=$(echo "${all[$key_s]}" | median); tp=$(echo "${all[$key_t]}" | median)
        if [ "$size" = rtt ]; then
            # One frame per port in flight: a crossing takes 2 / rate.
            awk -v w="$where" -v a="$sn" -v b="$tp" 'BEGIN {
                sa = (a > 0 ? 2 / a : 0); sb = (b > 0 ? 2 / b : 0)
                printf "result size=rtt placement=%s snapnet_crossing_us=%.2f testpmd_crossing_us=%.2f ratio=%.3f (target <= 1)\n",
                    w, sa, sb, (sb > 0 ? sa / sb : 0) }'
        else
            awk -v s="$size" -v w="$where" -v a="$sn" -v b="$tp" -v cap="$CAP" -v fe="$FRONTEND" 'BEGIN {
                printf "result frontend=%s size=%d placement=%s snapnet_mpps=%.3f testpmd_mpps=%.3f snapnet_mpps_per_core=%.2f testpmd_mpps_per_core=%.2f ratio=%.3f cap_pct=%d\n",
                    fe, s, w, a, b, a*100/cap, b*100/cap, (b > 0 ? a/b : 0), cap }'
        fi
        if [ -n "${BASE:-}" ] && [ -n "${all[${key_s/snapnet/base}]:-}" ]; then
            bs=$(echo "${all[${key_s/snapnet/base}]}" | median)
            awk -v s="$size" -v w="$where" -v a="$sn" -v b="$bs" 'BEGIN {
                printf "result size=%s placement=%s snapnet_mpps=%.3f base_mpps=%.3f ratio_to_base=%.3f\n", s, w, a, b, (b > 0 ? a/b : 0) }'
        fi
    done
    if [ -n "${all[snapnet.cost]:-}" ] && [ -n "${all[base.cost]:-}" ]; then
        sc=$(echo "${all[snapnet.cost]}" | median); bc=$(echo "${all[base.cost]}" | median)
        awk -v s="$size" -v a="$sc" -v b="$bc" 'BEGIN {
            printf "result size=%s snapnet_busy_ns_per_frame=%.1f base_busy_ns_per_frame=%.1f cost_ratio_to_base=%.3f (lower is cheaper)\n", s, a, b, (b > 0 ? a/b : 0) }'
    fi
    unset all
done
