#!/usr/bin/env bash
# Two QEMU guests on two snapnet hosts, one virtual network, joined by the
# VXLAN overlay: each host is a network namespace whose uplink is a veth into
# a third namespace standing for the fabric (a bridge). The guests ping each
# other and run iperf3 TCP across the overlay (guest TSO frames are
# segmented, then encapsulated). A guest MTU of 1450 leaves room for the
# 50 bytes of VXLAN on a 1500 B fabric.
source "$(dirname "$0")/lib.sh"
vm_setup
vm_two_hosts "snvo$$" 192.168.60
A=$VM_HOST_A B=$VM_HOST_B
MAC_A=$VM_UNDERLAY_A MAC_B=$VM_UNDERLAY_B
host_config() { # name local remote remote_mac guest_mac
    cat > "$VM_DIR/$1.json" <<JSON
{ "runtime_dir": "$VM_DIR", "control_socket": "$VM_DIR/$1-control.sock",
  "vnics": [ { "name": "vm$1", "mac": "$5", "network": 100, "mtu": 1450 } ],
  "uplinks": [ { "name": "fabric", "interface": "fabric",
                 "overlay": { "local_ip": "$2", "remotes": [ { "ip": "$3", "mac": "$4", "networks": [100] } ] } } ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1 } ] }
JSON
}
host_config a 192.168.60.1 192.168.60.2 "$MAC_B" 52:54:00:60:00:0a
host_config b 192.168.60.2 192.168.60.1 "$MAC_A" 52:54:00:60:00:0b
VM_NETNS=$A vm_snapnet "$VM_DIR/a.json"
ip netns exec "$B" "$VM_ROOT/target/release/snapnet" serve --config "$VM_DIR/b.json" >>"$VM_DIR/snapnet-b.log" 2>&1 &
VM_SNAPNET_B=$!
for _ in $(seq 100); do [ -S "$VM_DIR/vmb.sock" ] && break; sleep 0.05; done
vm_guest a "$VM_DIR/vma.sock" 52:54:00:60:00:0a \
    "snapnet.ip=10.60.0.1/24 snapnet.peer=10.60.0.2 snapnet.mtu=1450 snapnet.tests=ping,iperf-server,hold snapnet.hold=90 snapnet.hold_until=iperf"
vm_guest b "$VM_DIR/vmb.sock" 52:54:00:60:00:0b \
    "snapnet.ip=10.60.0.2/24 snapnet.peer=10.60.0.1 snapnet.mtu=1450 snapnet.tests=ping,iperf-client snapnet.iperf_time=5"
vm_wait b 150
vm_expect a ping
vm_expect b ping
vm_expect b iperf-client
gbps=$(vm_field "$(vm_result b iperf-client)" gbps)
vxlan=$("$VM_ROOT/target/release/snapnet" ctl --socket "$VM_DIR/a-control.sock" --json uplink stats fabric | sed -n 's/^  "rx_packets": \([0-9]*\).*/\1/p' | head -1)
[ "${vxlan:-0}" -gt 1000 ] || vm_fail "host A received only ${vxlan:-0} VXLAN frames"
vm_pass "iperf3 across the overlay=${gbps}Gbit/s vxlan_rx_on_a=$vxlan"
