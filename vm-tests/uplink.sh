#!/usr/bin/env bash
# A QEMU guest reaches another host on the wire through snapnet's AF_XDP
# uplink: it pings the host and runs an iperf3 TCP stream to it (guest TSO
# frames are segmented in software for the wire). A veth pair stands for the
# NIC; the "other host" is a network namespace of its own. snapnet runs in a
# second namespace that holds the uplink end, as a daemon on a VM host would.
source "$(dirname "$0")/lib.sh"
vm_setup
tag=$$
HOST_NS=snxvh$tag PEER_NS=snxvp$tag UPLINK=snxvu$tag WIRE=snxvw$tag
vm_cleanup_hook() {
    ip netns pids "$PEER_NS" 2>/dev/null | xargs -r kill -9
    ip netns del "$HOST_NS" 2>/dev/null
    ip netns del "$PEER_NS" 2>/dev/null
}
ip netns add "$HOST_NS" && ip netns add "$PEER_NS" || vm_fail "cannot create namespaces"
ip link add "$UPLINK" netns "$HOST_NS" type veth peer name "$WIRE" netns "$PEER_NS" || vm_fail "no veth"
ip -n "$HOST_NS" addr add 10.66.0.1/24 dev "$UPLINK"
ip -n "$PEER_NS" addr add 10.66.0.2/24 dev "$WIRE"
for ns in "$HOST_NS" "$PEER_NS"; do ip -n "$ns" link set lo up; done
ip -n "$HOST_NS" link set "$UPLINK" up
ip -n "$PEER_NS" link set "$WIRE" up
# A host on a real wire sends complete checksums (its NIC computes them); a
# veth would hand over CHECKSUM_PARTIAL frames instead, which XDP and AF_XDP
# pass on as they are. Make the peer behave like a host behind a real NIC.
ip netns exec "$PEER_NS" ethtool -K "$WIRE" tx off >/dev/null || vm_fail "ethtool -K tx off"
ip netns exec "$PEER_NS" iperf3 -s -1 >"$VM_DIR/iperf-server.log" 2>&1 &
VM_PIDS+=($!)

cat > "$VM_DIR/uplink.json" <<JSON
{ "runtime_dir": "$VM_DIR",
  "vnics": [ { "name": "vm0", "mac": "52:54:00:66:00:10" } ],
  "uplinks": [ { "name": "up0", "interface": "$UPLINK" } ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1 } ] }
JSON
VM_NETNS=$HOST_NS vm_snapnet "$VM_DIR/uplink.json"
vm_guest a "$VM_DIR/vm0.sock" 52:54:00:66:00:10 \
    "snapnet.ip=10.66.0.10/24 snapnet.peer=10.66.0.2 snapnet.tests=features,ping,iperf-client snapnet.iperf_time=5"
vm_wait a 150
vm_expect a features
f=$(vm_result a features)
[ "$(vm_field "$f" tso4)" = on ] || vm_fail "guest TSO is off, segmentation not exercised: $f"
vm_expect a ping
vm_expect a iperf-client
gbps=$(vm_field "$(vm_result a iperf-client)" gbps)
stats=$("$VM_ROOT/target/release/snapnet" ctl --socket "$VM_DIR/control.sock" --json uplink stats up0) \
    || vm_fail "uplink.stats failed"
segments=$(echo "$stats" | sed -n 's/^  "tx_segments": \([0-9]*\).*/\1/p' | head -1)
[ "${segments:-0}" -gt 1000 ] || vm_fail "the uplink cut only ${segments:-0} segments from guest TSO frames"
# The host's own address on the uplink kept working meanwhile.
ip netns exec "$PEER_NS" ping -c 1 -W 2 10.66.0.1 >/dev/null || vm_fail "host address unreachable"
vm_pass "iperf3 guest->wire=${gbps}Gbit/s segments=$segments"
