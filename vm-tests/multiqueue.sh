#!/usr/bin/env bash
# Guests with 2 queue pairs: traffic flows on both queues of each vNIC
# (snapnet's per-queue counters), with 4 parallel iperf3 streams.
source "$(dirname "$0")/lib.sh"
vm_setup
cfg=$(vm_two_vnics ', "queue_pairs": 2')
vm_snapnet "$cfg"
vm_guest a "$VM_DIR/vnic0.sock" 52:54:00:5a:00:01 \
    "snapnet.ip=10.0.0.1/24 snapnet.peer=10.0.0.2 snapnet.tests=features,iperf-server,hold snapnet.hold=90 snapnet.hold_until=iperf" --queues 2
vm_guest b "$VM_DIR/vnic1.sock" 52:54:00:5a:00:02 \
    "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=features,ping,iperf-client snapnet.iperf_time=5 snapnet.iperf_streams=4" --queues 2
vm_wait b 180
vm_expect b iperf-client
q=$(vm_field "$(vm_result b features)" queues)
[ "$q" = 2 ] || vm_fail "guest b uses $q queue pairs, not 2"
table=$(vm_counters)
vm_log "$table"
# Per-queue lines look like "  q0  tx_packets tx_bytes rx_packets rx_bytes dropped".
for vnic in vnic0 vnic1; do
    lines=$(echo "$table" | awk -v v="$vnic" '$1 == v {on = 1; next} /^[^ ]/ {on = 0} on && $1 ~ /^q[0-9]/')
    busy=$(echo "$lines" | awk '$2 > 0 && $4 > 0' | wc -l)
    [ "$busy" -ge 2 ] || vm_fail "$vnic: not every queue carried traffic both ways: $lines"
done
vm_pass "both queue pairs of both vNICs carried traffic"
