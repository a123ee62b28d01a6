#!/usr/bin/env bash
# A guest's QEMU is killed and started again (the guest reboots): snapnet
# serves the new connection and traffic resumes.
source "$(dirname "$0")/lib.sh"
vm_setup
cfg=$(vm_two_vnics)
vm_snapnet "$cfg"
vm_guest a "$VM_DIR/vnic0.sock" 52:54:00:5a:00:01 \
    "snapnet.ip=10.0.0.1/24 snapnet.peer=10.0.0.2 snapnet.tests=hold snapnet.hold=90"
vm_guest b "$VM_DIR/vnic1.sock" 52:54:00:5a:00:02 \
    "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=ping snapnet.ping_count=3"
vm_wait b 120
vm_expect b ping
# Kill b's QEMU in the middle of its next life, then boot it once more.
mv "$VM_DIR/b.log" "$VM_DIR/b-first.log"
vm_guest b "$VM_DIR/vnic1.sock" 52:54:00:5a:00:02 \
    "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=pingloop snapnet.duration=60"
for i in $(seq 300); do grep -q "SNAPNET-PING" "$VM_DIR/b.log" 2>/dev/null && break; sleep 0.1; done
vm_guest_kill b
sleep 1
mv "$VM_DIR/b.log" "$VM_DIR/b-killed.log"
vm_guest b "$VM_DIR/vnic1.sock" 52:54:00:5a:00:02 \
    "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=ping snapnet.ping_count=3"
vm_wait b 120
vm_expect b ping
vm_pass "traffic resumed after QEMU was killed and restarted"
