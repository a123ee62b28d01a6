#!/usr/bin/env bash
# Figures of the overlay directory in etcd (docs/directory.md, issue #17).
# Two snapnet hosts in network namespaces joined by a fabric bridge, which
# also holds a one-member etcd; no table is configured by hand.
#   1. convergence: `vnic.add` on host B until a guest on host A reaches the
#      new guest, p50/p99 over ADDS adds (snapnet-bench directory-convergence);
#   2. scale: host A follows a directory of 100 simulated hosts x 100 vNICs
#      (10 000 entries) under 10 changes/s for SCALE_SECONDS: convergence,
#      the directory threads' CPU, memory; then etcd is cut off from host A
#      while 1 000 changes happen, and restored: time to a consistent table
#      (snapnet-bench directory-scale);
#   3. the overlay's per-frame lookup with 10 000 entries against 10
#      (snapnet-bench overlay-lookup).
# Run as root on Debian 12: bash scripts/bench-directory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-prereqs.sh protobuf-compiler build-essential pkg-config iproute2 etcd-server etcd-client >/dev/null
cargo build --release --bin snapnet --bin snapnet-bench >&2
ADDS=${ADDS:-100}
SCALE_SECONDS=${SCALE_SECONDS:-30}
bin=$PWD/target/release
p=snbd$$
net=192.168.63
etcd_url=http://$net.10:2379
dir=$(mktemp -d /tmp/snapnet-bench-directory.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "${p}a" "${p}b" "${p}f"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "${p}f"
ip -n "${p}f" link add br0 type bridge
ip -n "${p}f" link set br0 up
ip -n "${p}f" link set lo up
ip -n "${p}f" addr add "$net.10/24" dev br0
i=1
for h in a b; do
    ip netns add "$p$h"
    ip link add "${p}u$h" netns "$p$h" type veth peer name "${p}f$h" netns "${p}f"
    ip -n "${p}f" link set "${p}f$h" master br0
    ip -n "${p}f" link set "${p}f$h" up
    ip -n "$p$h" link set "${p}u$h" name fabric
    ip -n "$p$h" addr add "$net.$i/24" dev fabric
    ip -n "$p$h" link set fabric up
    ip -n "$p$h" link set lo up
    i=$((i + 1))
done
ip netns exec "${p}f" etcd --name e0 --data-dir "$dir/etcd" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://$net.10:2380" --initial-advertise-peer-urls "http://$net.10:2380" \
    --initial-cluster "e0=http://$net.10:2380" >"$dir/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    ip netns exec "${p}f" env ETCDCTL_API=3 etcdctl --endpoints "$etcd_url" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
done
i=1
for h in a b; do
    cat > "$dir/$h.json" <<JSON
{ "runtime_dir": "$dir", "control_socket": "$dir/$h-control.sock",
  "uplinks": [ { "name": "fabric", "interface": "fabric" } ],
  "groups": [ { "name": "default", "policy": "spreading", "threads": 1 } ],
  "directory": { "endpoints": [ "$etcd_url" ], "host_id": "host-$h", "underlay_ip": "$net.$i",
                 "uplink": "fabric", "prefix": "/$p", "lease_ttl_seconds": 10 } }
JSON
    RUST_LOG=warn ip netns exec "$p$h" "$bin/snapnet" serve --config "$dir/$h.json" >"$dir/$h.log" 2>&1 &
    pids+=($!)
    eval "pid_$h=$!"
    i=$((i + 1))
done
for h in a b; do
    for _ in $(seq 100); do
        "$bin/snapnet" ctl --socket "$dir/$h-control.sock" --json directory status 2>/dev/null | grep -q '"state": "synced"' && break
        sleep 0.1
    done
done
echo "== convergence: vnic.add on host B until host A's guest reaches it ($ADDS adds)"
"$bin/snapnet-bench" directory-convergence --control-a "$dir/a-control.sock" --control-b "$dir/b-control.sock" \
    --socket-dir "$dir" --adds "$ADDS"
echo "== scale and recovery: host A follows 100 simulated hosts x 100 vNICs"
# shellcheck disable=SC2154 # pid_a is set by the eval above
ip netns exec "${p}f" "$bin/snapnet-bench" directory-scale --etcd "$etcd_url" --prefix "/$p" \
    --control "$dir/a-control.sock" --pid "$pid_a" --seconds "$SCALE_SECONDS" \
    --cut "ip -n ${p}f link set ${p}fa down" --restore "ip -n ${p}f link set ${p}fa up"
echo "== the overlay's per-frame lookup, 10 000 entries against 10"
taskset -c 1 "$bin/snapnet-bench" overlay-lookup
