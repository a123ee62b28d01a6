#!/usr/bin/env bash
# MTU 1500: a 1500-byte IP packet with DF set crosses; a guest that raises its
# own MTU and sends a larger frame has it dropped and counted by snapnet.
source "$(dirname "$0")/lib.sh"
vm_setup
cfg=$(vm_two_vnics ', "mtu": 1500')
vm_snapnet "$cfg"
vm_guest a "$VM_DIR/vnic0.sock" 52:54:00:5a:00:01 \
    "snapnet.ip=10.0.0.1/24 snapnet.peer=10.0.0.2 snapnet.mtu=4000 snapnet.tests=hold snapnet.hold=60"
vm_guest b "$VM_DIR/vnic1.sock" 52:54:00:5a:00:02 \
    "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.mtu=4000 snapnet.tests=ping,ping-big-fail snapnet.ping_size=1472 snapnet.df=1 snapnet.big_size=3000"
vm_wait b 150
vm_expect b ping
vm_expect b ping-big-fail
table=$(vm_counters)
vm_log "$table"
echo "$table" | grep -E "^vnic1 .*too_big=[1-9]" >/dev/null || vm_fail "snapnet did not count the oversize frames as too_big"
vm_pass "1500 B with DF crossed; 3028 B frames dropped as too_big"
