#!/usr/bin/env bash
# Two QEMU guests on two snapnet hosts joined by a VXLAN overlay that nobody
# configured: each host publishes its guest's MAC to etcd and programs its
# uplink from what the other host published (docs/directory.md). The hosts
# are network namespaces whose `fabric` veth goes into a third namespace
# holding a bridge and a one-member etcd. The guests ping each other and run
# iperf3 across the directory-programmed overlay.
source "$(dirname "$0")/lib.sh"
vm_setup
command -v etcd >/dev/null || vm_fail "no etcd (Debian's etcd-server)"
vm_two_hosts "snvd$$" 192.168.62
A=$VM_HOST_A B=$VM_HOST_B
ETCD_PID=""
eval "$(declare -f vm_cleanup_hook | sed '1s/vm_cleanup_hook/vm_two_hosts_cleanup/')"
vm_cleanup_hook() {
    [ -n "$ETCD_PID" ] && kill -9 "$ETCD_PID" 2>/dev/null
    vm_two_hosts_cleanup
}
ETCD=http://192.168.62.10:2379
ip -n "$VM_FABRIC_NS" addr add 192.168.62.10/24 dev br0
ip -n "$VM_FABRIC_NS" link set lo up
ip netns exec "$VM_FABRIC_NS" etcd --name e0 --data-dir "$VM_DIR/etcd" \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls http://192.168.62.10:2380 --initial-advertise-peer-urls http://192.168.62.10:2380 \
    --initial-cluster e0=http://192.168.62.10:2380 >"$VM_DIR/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 100); do
    ip netns exec "$VM_FABRIC_NS" env ETCDCTL_API=3 etcdctl --endpoints "$ETCD" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
done
ip netns exec "$VM_FABRIC_NS" env ETCDCTL_API=3 etcdctl --endpoints "$ETCD" endpoint health >/dev/null 2>&1 ||
    vm_fail "etcd did not start (see $VM_DIR/etcd.log)"
host_config() { # name underlay_ip guest_mac
    cat > "$VM_DIR/$1.json" <<JSON
{ "runtime_dir": "$VM_DIR", "control_socket": "$VM_DIR/$1-control.sock",
  "vnics": [ { "name": "vm$1", "mac": "$3", "network": 100, "mtu": 1450 } ],
  "uplinks": [ { "name": "fabric", "interface": "fabric" } ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1 } ],
  "directory": { "endpoints": [ "$ETCD" ], "host_id": "host-$1", "underlay_ip": "$2",
                 "uplink": "fabric", "prefix": "/snvd$$", "lease_ttl_seconds": 5 } }
JSON
}
host_config a 192.168.62.1 52:54:00:62:00:0a
host_config b 192.168.62.2 52:54:00:62:00:0b
VM_NETNS=$A vm_snapnet "$VM_DIR/a.json"
ip netns exec "$B" "$VM_ROOT/target/release/snapnet" serve --config "$VM_DIR/b.json" >>"$VM_DIR/snapnet-b.log" 2>&1 &
VM_SNAPNET_B=$!
for _ in $(seq 100); do [ -S "$VM_DIR/vmb.sock" ] && break; sleep 0.05; done
# Each host's table comes from the directory alone: the other host and its
# guest's MAC.
ctl() { "$VM_ROOT/target/release/snapnet" ctl --socket "$VM_DIR/$1-control.sock" --json "${@:2}"; }
for h in a b; do
    for _ in $(seq 100); do
        ctl "$h" directory status | grep -q '"remote_macs": 1' && break
        sleep 0.1
    done
    ctl "$h" directory status | grep -q '"state": "synced"' || vm_fail "host $h: directory not synced: $(ctl "$h" directory status)"
    ctl "$h" directory status | grep -q '"remote_macs": 1' || vm_fail "host $h: the other guest's MAC not learnt: $(ctl "$h" directory status)"
done
ctl a uplink list | grep -q '"mac": "52:54:00:62:00:0b"' || vm_fail "host A's table lacks guest b's MAC"
vm_guest a "$VM_DIR/vma.sock" 52:54:00:62:00:0a \
    "snapnet.ip=10.62.0.1/24 snapnet.peer=10.62.0.2 snapnet.mtu=1450 snapnet.tests=ping,iperf-server,hold snapnet.hold=90 snapnet.hold_until=iperf"
vm_guest b "$VM_DIR/vmb.sock" 52:54:00:62:00:0b \
    "snapnet.ip=10.62.0.2/24 snapnet.peer=10.62.0.1 snapnet.mtu=1450 snapnet.tests=ping,iperf-client snapnet.iperf_time=5"
vm_wait b 150
vm_expect a ping
vm_expect b ping
vm_expect b iperf-client
gbps=$(vm_field "$(vm_result b iperf-client)" gbps)
vxlan=$(ctl a uplink stats fabric | sed -n 's/^  "rx_packets": \([0-9]*\).*/\1/p' | head -1)
[ "${vxlan:-0}" -gt 1000 ] || vm_fail "host A received only ${vxlan:-0} VXLAN frames"
vm_pass "iperf3 across the directory-programmed overlay=${gbps}Gbit/s vxlan_rx_on_a=$vxlan"
