#!/usr/bin/env bash
# Uplink throughput, 64 B frames, on one veth pair (the "NIC") between two
# network namespaces made for the run; interleaved rounds, medians, ratios.
#
#   vNIC -> wire:  (a) bare AF_XDP TX loop (snapnet-bench xsk-tx) on the
#                      uplink: the limit of this path here
#                  (b) snapnet: snapnet-bench tx into a vNIC -> switch -> uplink
#                  (c) dpdk-testpmd io-forwarding net_vhost -> net_af_xdp,
#                      driven by the same snapnet-bench tx
#                  measured as frames arriving at the other end of the veth.
#   wire -> vNIC:  an AF_XDP generator in the peer namespace (CPU 0) sends to
#                  the guest MAC; received by (a) a bare AF_XDP RX loop behind
#                  snapnet's XDP program, (b) snapnet -> snapnet-bench rx,
#                  (c) testpmd net_af_xdp -> net_vhost -> snapnet-bench rx.
# The backend (snapnet's engine group, testpmd's forwarding lcore, the bare
# loop) runs on CPU 1; generators and the vhost-user frontend on CPU 0. This
# machine has two CPUs, so in the wire -> vNIC runs of (b) and (c) the
# generator and the receiving frontend share CPU 0 (the frontend's ring is
# 4096 entries deep to ride out the scheduler's time slices): those two are
# then bounded by the generator, which runs at full speed only against (a).
#
# Usage: scripts/bench-uplink.sh [rounds] [seconds]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-3}
# CPU of the vhost-user frontend that receives in the wire -> vNIC runs.
REV_FRONTEND_CPU=${REV_FRONTEND_CPU:-0}
# Its ring size: it shares CPU 0 with the generator, so it must buffer a
# scheduler time slice of traffic.
REV_RING=${REV_RING:-4096}
bash scripts/install-prereqs.sh protobuf-compiler dpdk-dev iproute2 ethtool >/dev/null
cargo build --release --bins >/dev/null 2>&1
SN=$PWD/target/release/snapnet
BENCH=$PWD/target/release/snapnet-bench
tag=$$
H=snbh$tag P=snbp$tag U=snbu$tag W=snbw$tag
WORK=$(mktemp -d /tmp/snapnet-bench-uplink.XXXXXX)
GUEST_MAC=52:54:00:bb:00:01
cleanup() {
    pkill -9 -f "$WORK" 2>/dev/null || true
    pkill -9 -f "file-prefix snbu$tag" 2>/dev/null || true
    ip netns pids "$P" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns pids "$H" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    sleep 0.2
    ip netns del "$H" 2>/dev/null || true
    ip netns del "$P" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$H"; ip netns add "$P"
ip link add "$U" netns "$H" type veth peer name "$W" netns "$P"
ip -n "$H" link set "$U" up; ip -n "$P" link set "$W" up
# The peer acts as a host behind a real NIC: complete checksums.
ip netns exec "$P" ethtool -K "$W" tx off >/dev/null
PEER_MAC=$(ip netns exec "$P" cat "/sys/class/net/$W/address")
cat > "$WORK/sn.json" <<JSON
{ "runtime_dir": "$WORK", "vnics": [ { "name": "bench0", "mac": "$GUEST_MAC" } ],
  "uplinks": [ { "name": "up0", "interface": "$U" } ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1, "cpus": [1] } ] }
JSON

peer_rx() { ip netns exec "$P" cat "/sys/class/net/$W/statistics/rx_packets"; }
# Frames per second arriving at the peer, over SECS seconds in the middle of a run.
peer_rate() {
    sleep 1
    local a b t0 t1
    a=$(peer_rx); t0=$(date +%s.%N)
    sleep "$SECS"
    b=$(peer_rx); t1=$(date +%s.%N)
    awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.4f", (b - a) / (t1 - t0) / 1e6 }'
}
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" | head -1; }
run_secs=$(awk -v s="$SECS" 'BEGIN { print s + 2 }')

start_snapnet() {
    rm -f "$WORK"/*.sock
    ip netns exec "$H" "$SN" serve --config "$WORK/sn.json" </dev/null >"$WORK/sn.log" 2>&1 &
    SN_PID=$!
    for _ in $(seq 100); do [ -S "$WORK/bench0.sock" ] && grep -q running "$WORK/sn.log" && return; sleep 0.05; done
    echo "snapnet did not start" >&2; cat "$WORK/sn.log" >&2; exit 1
}
stop_snapnet() { kill -INT "$SN_PID" 2>/dev/null || true; wait "$SN_PID" 2>/dev/null || true; }

start_testpmd() {
    rm -f "$WORK/tp.sock"
    ip netns exec "$H" dpdk-testpmd --no-pci --no-huge -m 512 --no-shconf --file-prefix "snbu$tag" --lcores '0@1,1@1' \
        --vdev "net_vhost0,iface=$WORK/tp.sock" --vdev "net_af_xdp0,iface=$U,start_queue=0,queue_count=1" -- \
        --forward-mode=io --auto-start --total-num-mbufs=16384 --stats-period 3600 </dev/null >"$WORK/tp.log" 2>&1 &
    TP_PID=$!
    for _ in $(seq 200); do grep -q "Checking link statuses" "$WORK/tp.log" 2>/dev/null && return; sleep 0.1; done
    echo "testpmd did not start" >&2; tail "$WORK/tp.log" >&2; exit 1
}
stop_testpmd() { kill -INT "$TP_PID" 2>/dev/null || true; wait "$TP_PID" 2>/dev/null || true; sleep 0.2; }

# A vhost-user frontend command against a backend that may still reset early
# connections (testpmd does): retried until it reports.
frontend() {
    local out=""
    for _ in $(seq 20); do
        out=$("$@" 2>>"$WORK/bench.err" | grep '^result' || true)
        [ -n "$out" ] && break
        sleep 0.5
    done
    echo "$out"
}

fwd_bare() {
    ip netns exec "$H" taskset -c 1 "$BENCH" xsk-tx --interface "$U" --dst-mac "$PEER_MAC" --seconds "$run_secs" >/dev/null &
    local pid=$! r
    r=$(peer_rate); wait "$pid"; echo "$r"
}
fwd_snapnet() {
    start_snapnet
    taskset -c 0 "$BENCH" tx --socket "$WORK/bench0.sock" --dst-mac "$PEER_MAC" --seconds "$run_secs" >/dev/null &
    local pid=$! r
    r=$(peer_rate); wait "$pid" || true; stop_snapnet; echo "$r"
}
fwd_testpmd() {
    start_testpmd
    (frontend taskset -c 0 "$BENCH" tx --socket "$WORK/tp.sock" --dst-mac "$PEER_MAC" --seconds "$run_secs" >/dev/null) &
    local pid=$! r
    r=$(peer_rate); wait "$pid" || true; stop_testpmd; echo "$r"
}
generator() {
    ip netns exec "$P" taskset -c 0 "$BENCH" xsk-tx --interface "$W" --dst-mac "$GUEST_MAC" --seconds "$run_secs" >/dev/null &
    GEN_PID=$!
}
rev_bare() {
    generator
    ip netns exec "$H" taskset -c 1 "$BENCH" xsk-rx --interface "$U" --mac "$GUEST_MAC" --seconds "$SECS" | field rx_mpps
    wait "$GEN_PID" || true
}
rev_snapnet() {
    start_snapnet
    generator
    frontend taskset -c "$REV_FRONTEND_CPU" "$BENCH" rx --socket "$WORK/bench0.sock" --seconds "$SECS" --queue-size "$REV_RING" | field rx_mpps
    wait "$GEN_PID" || true; stop_snapnet
}
rev_testpmd() {
    start_testpmd
    generator
    frontend taskset -c "$REV_FRONTEND_CPU" "$BENCH" rx --socket "$WORK/tp.sock" --seconds "$SECS" --queue-size "$REV_RING" | field rx_mpps
    wait "$GEN_PID" || true; stop_testpmd
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
echo "64 B frames, ${ROUNDS} interleaved rounds of ${SECS} s; backend on CPU 1, generator/frontend on CPU 0"
for dir in ${DIRS:-fwd rev}; do
    a_all=""; b_all=""; c_all=""
    for _ in $(seq "$ROUNDS"); do
        a_all="$a_all $(${dir}_bare)"
        b_all="$b_all $(${dir}_snapnet)"
        c_all="$c_all $(${dir}_testpmd)"
    done
    a=$(echo "$a_all" | median); b=$(echo "$b_all" | median); c=$(echo "$c_all" | median)
    name=$([ "$dir" = fwd ] && echo "vnic->wire" || echo "wire->vnic")
    printf "%-11s bare AF_XDP:%s | snapnet:%s | testpmd:%s (Mpps)\n" "$name" "$a_all" "$b_all" "$c_all"
    awk -v d="$name" -v a="$a" -v b="$b" -v c="$c" 'BEGIN {
        printf "result direction=%s bare_mpps=%.3f snapnet_mpps=%.3f testpmd_mpps=%.3f snapnet_vs_bare=%.3f snapnet_vs_testpmd=%.3f\n",
            d, a, b, c, (a > 0 ? b / a : 0), (c > 0 ? b / c : 0) }'
done
