#!/usr/bin/env bash
# Shaping and virtualization, measured:
#  1. achieved against configured rate of a vNIC's egress limit at 10 Mbit/s,
#     100 Mbit/s and 1 Gbit/s (1500 B frames, vnic0 -> vnic1, 2 s after a
#     0.5 s warm-up; snapnet-bench pair counts at the receiver);
#  2. the share two vNICs of weights 1 and 3 get of an uplink limited to
#     100 Mbit/s (a veth pair between namespaces made for the run);
#  3. what virtualization and shaping cost per packet on the vNIC -> vNIC
#     path at 64 B: plain vNICs against vNICs in a virtual network with an
#     allowed-address list and egress/ingress/weight settings that never
#     bind, interleaved rounds, the backend capped at CAP % of CPU 1 (as in
#     bench-vs-testpmd.sh) so that it, not the frontend, is the bottleneck.
#
# Usage: scripts/bench-shaping.sh [rounds]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
CAP=${CAP:-25}
bash scripts/install-prereqs.sh protobuf-compiler iproute2 ethtool >/dev/null
cargo build --release --bins >/dev/null 2>&1
SN=$PWD/target/release/snapnet
BENCH=$PWD/target/release/snapnet-bench
WORK=$(mktemp -d /tmp/snapnet-bench-shaping.XXXXXX)
tag=$$
H=snsh$tag P=snsp$tag U=snsu$tag W=snsw$tag
CG=""
cleanup() {
    pkill -INT -f "$SN serve --config $WORK" 2>/dev/null || true
    pkill -9 -f "$WORK" 2>/dev/null || true
    sleep 0.3
    if [ -n "$CG" ] && [ -d "$CG" ]; then
        while read -r p; do echo "$p" > /sys/fs/cgroup/cpu/cgroup.procs 2>/dev/null || true; done < "$CG/cgroup.procs"
        rmdir "$CG" 2>/dev/null || true
    fi
    ip netns del "$H" 2>/dev/null || true
    ip netns del "$P" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

start_snapnet() { # config [netns]
    rm -f "$WORK"/*.sock
    if [ -n "${2:-}" ]; then
        ip netns exec "$2" "$SN" serve --config "$1" </dev/null >"$WORK/sn.log" 2>&1 &
    elif [ -n "$CG" ]; then
        sh -c 'echo $$ > "$0"/cgroup.procs; shift; exec "$@"' "$CG" x "$SN" serve --config "$1" </dev/null >"$WORK/sn.log" 2>&1 &
    else
        "$SN" serve --config "$1" </dev/null >"$WORK/sn.log" 2>&1 &
    fi
    SN_PID=$!
    for _ in $(seq 100); do grep -q running "$WORK/sn.log" 2>/dev/null && return; sleep 0.05; done
    echo "snapnet did not start" >&2; cat "$WORK/sn.log" >&2; exit 1
}
stop_snapnet() { kill -INT "$SN_PID" 2>/dev/null || true; wait "$SN_PID" 2>/dev/null || true; }
ctl() { "$SN" ctl --socket "$WORK/control.sock" "$@"; }
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" | head -1; }

vnics() { # extra JSON for both vNICs
    cat <<JSON
{ "runtime_dir": "$WORK",
  "vnics": [ { "name": "vnic0", "mac": "52:54:00:5a:00:01" $1 },
             { "name": "vnic1", "mac": "52:54:00:5a:00:02" $1 } ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1, "cpus": [1] } ] }
JSON
}

echo "== 1. egress limit: achieved vs configured (1500 B frames, 2 s)"
vnics "" > "$WORK/plain.json"
start_snapnet "$WORK/plain.json"
printf "%-12s %-14s %-8s\n" configured achieved ratio
for mbps in 10 100 1000; do
    ctl call vnic.update "{\"name\":\"vnic0\",\"tx_limit\":{\"bytes_per_sec\":$((mbps * 125000))}}" >/dev/null
    got=$(taskset -c 0 "$BENCH" pair --tx "$WORK/vnic0.sock" --rx "$WORK/vnic1.sock" --size 1500 --seconds 2 | grep '^result' | field rx_gbps)
    # The tool counts whole frames (1500 B); the limit counts the same bytes.
    awk -v c="$mbps" -v g="$got" 'BEGIN {
        printf "%-12s %-14s %-8.3f\n", c " Mbit/s", sprintf("%.2f Mbit/s", g * 1000), g * 1000 / c
        printf "result test=egress_limit configured_mbps=%d achieved_mbps=%.3f ratio=%.4f\n", c, g * 1000, g * 1000 / c }'
done
stop_snapnet

echo "== 2. weights 1:3 on an uplink limited to 100 Mbit/s"
ip netns add "$H"; ip netns add "$P"
ip link add "$U" netns "$H" type veth peer name "$W" netns "$P"
ip -n "$H" link set "$U" up; ip -n "$P" link set "$W" up
PEER_MAC=$(ip netns exec "$P" cat "/sys/class/net/$W/address")
cat > "$WORK/share.json" <<JSON
{ "runtime_dir": "$WORK",
  "vnics": [ { "name": "w1", "mac": "52:54:00:5a:01:01", "weight": 1 },
             { "name": "w3", "mac": "52:54:00:5a:01:03", "weight": 3 } ],
  "uplinks": [ { "name": "up0", "interface": "$U", "tx_limit": { "bytes_per_sec": 12500000 } } ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1, "cpus": [1] } ] }
JSON
start_snapnet "$WORK/share.json" "$H"
# The peer's MAC must be known to the switch (unknown unicast is flooded, and
# flooded frames never wait): one frame from the peer teaches it.
ip netns exec "$P" "$BENCH" xsk-tx --interface "$W" --dst-mac ff:ff:ff:ff:ff:ff --src-mac "$PEER_MAC" --seconds 0.2 >/dev/null
port_bytes() { ctl --json vnic stats "$1" | tr -d ' \n' | sed -n 's/.*"switch_port":{"backpressure":[0-9]*,"drops":{[^}]*},"rx_bytes":\([0-9]*\).*/\1/p'; }
senders=()
for v in w1 w3; do
    taskset -c 0 "$BENCH" tx --socket "$WORK/$v.sock" --dst-mac "$PEER_MAC" --size 1500 --seconds 4 >/dev/null &
    senders+=($!)
done
sleep 1.5
a1=$(port_bytes w1); a3=$(port_bytes w3); t0=$(date +%s.%N)
sleep 2
b1=$(port_bytes w1); b3=$(port_bytes w3); t1=$(date +%s.%N)
wait "${senders[@]}"
stop_snapnet
awk -v a1="$a1" -v a3="$a3" -v b1="$b1" -v b3="$b3" -v t0="$t0" -v t1="$t1" 'BEGIN {
    d1 = b1 - a1; d3 = b3 - a3; s = t1 - t0
    printf "w1 %.1f Mbit/s, w3 %.1f Mbit/s, together %.1f of 100 Mbit/s; w3:w1 = %.2f (weights 3:1)\n", d1*8/s/1e6, d3*8/s/1e6, (d1+d3)*8/s/1e6, d3/d1
    printf "result test=weighted_share w1_mbps=%.2f w3_mbps=%.2f ratio=%.3f total_mbps=%.2f\n", d1*8/s/1e6, d3*8/s/1e6, d3/d1, (d1+d3)*8/s/1e6 }'

echo "== 3. per-packet cost of virtualization + shaping, vNIC -> vNIC, 64 B (backend capped at ${CAP}% of CPU 1)"
if [ "$CAP" -lt 100 ] && [ -d /sys/fs/cgroup/cpu ] && [ -w /sys/fs/cgroup/cpu ]; then
    CG=/sys/fs/cgroup/cpu/snapnet-bench-shaping-$$
    mkdir -p "$CG"
    echo 10000 > "$CG/cpu.cfs_period_us"
    echo $((CAP * 100)) > "$CG/cpu.cfs_quota_us"
elif [ "$CAP" -lt 100 ] && [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG=/sys/fs/cgroup/snapnet-bench-shaping-$$
    mkdir -p "$CG"
    echo "$((CAP * 100)) 10000" > "$CG/cpu.max"
fi
big='{ "bytes_per_sec": 1000000000000, "packets_per_sec": 1000000000000 }'
vnics ", \"network\": 42, \"allowed_ips\": [\"10.42.0.1\", \"10.42.0.2\", \"2001:db8::1\"], \"tx_limit\": $big, \"rx_limit\": $big, \"weight\": 2" > "$WORK/full.json"
run() { start_snapnet "$1"; taskset -c 0 "$BENCH" pair --tx "$WORK/vnic0.sock" --rx "$WORK/vnic1.sock" --size 64 --seconds 3 | grep '^result' | field rx_mpps; stop_snapnet; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
plain_all=""; full_all=""
for _ in $(seq "$ROUNDS"); do
    plain_all="$plain_all $(run "$WORK/plain.json")"
    full_all="$full_all $(run "$WORK/full.json")"
done
p=$(echo "$plain_all" | median); f=$(echo "$full_all" | median)
echo "plain:$plain_all | virtualized+shaped:$full_all (Mpps)"
awk -v p="$p" -v f="$f" 'BEGIN {
    printf "result test=per_packet_cost plain_mpps=%.3f full_mpps=%.3f cost_pct=%.1f\n", p, f, (p > 0 ? (1 - f / p) * 100 : 0) }'
