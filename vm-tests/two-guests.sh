#!/usr/bin/env bash
# Two guests ping each other and run an iperf3 TCP stream through snapnet,
# with checksum and TSO offload negotiated (checked from inside the guests).
# VM_QEMU picks the QEMU binary (default: Debian's qemu-system-x86_64).
source "$(dirname "$0")/lib.sh"
vm_setup
cfg=$(vm_two_vnics)
vm_snapnet "$cfg"
vm_guest a "$VM_DIR/vnic0.sock" 52:54:00:5a:00:01 \
    "snapnet.ip=10.0.0.1/24 snapnet.peer=10.0.0.2 snapnet.tests=features,ping,iperf-server,hold snapnet.hold=90 snapnet.hold_until=iperf"
vm_guest b "$VM_DIR/vnic1.sock" 52:54:00:5a:00:02 \
    "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=features,ping,iperf-client snapnet.iperf_time=5"
vm_wait b 150
for g in a b; do
    vm_expect "$g" features
    f=$(vm_result "$g" features)
    [ "$(vm_field "$f" csum)" = on ] || vm_fail "$g: checksum offload is off: $f"
    [ "$(vm_field "$f" tso4)" = on ] || vm_fail "$g: TSO is off: $f"
    vm_expect "$g" ping
done
vm_expect b iperf-client
gbps=$(vm_field "$(vm_result b iperf-client)" gbps)
vm_pass "qemu=$("$VM_QEMU" --version | head -1 | awk '{print $4}') iperf3=${gbps}Gbit/s"
