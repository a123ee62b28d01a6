#!/usr/bin/env bash
# Two guests ping each other through snapnet over packed virtqueues
# (virtio-net-pci packed=on, QEMU 10 from bookworm-backports): both guest
# drivers must negotiate VIRTIO_F_RING_PACKED (read from inside the guests),
# the pings must pass, and snapnet must count the traffic without a single
# malformed-chain drop.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(bash "$root/qemu-scripts/fetch-qemu10.sh") || { echo "FAIL packed (0 s) cannot fetch QEMU 10"; exit 1; }
eval "$(echo "$out" | grep -E '^QEMU10=')"
VM_QEMU=$QEMU10
source "$root/vm-tests/lib.sh"
vm_setup
cfg=$(vm_two_vnics)
vm_snapnet "$cfg"
# The property of `-device virtio-net-pci,...,packed=on`, set for every
# virtio-net-pci device without a launch-guest.sh option of its own.
packed=(-- -global virtio-net-pci.packed=on)
# Each stays up a while after its pings, so the other's last ones are answered.
vm_guest a "$VM_DIR/vnic0.sock" 52:54:00:5a:00:01 \
    "snapnet.ip=10.0.0.1/24 snapnet.peer=10.0.0.2 snapnet.tests=features,ping,hold snapnet.hold=15 snapnet.ping_count=20" \
    "${packed[@]}"
vm_guest b "$VM_DIR/vnic1.sock" 52:54:00:5a:00:02 \
    "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=features,ping,hold snapnet.hold=8 snapnet.ping_count=20 snapnet.ping_size=1400" \
    "${packed[@]}"
vm_wait b 150
vm_wait a 60
for g in a b; do
    vm_expect "$g" features
    f=$(vm_result "$g" features)
    case ",$(vm_field "$f" names)," in
        *,RING_PACKED,*) ;;
        *) vm_fail "$g: the guest driver did not negotiate RING_PACKED: $f" ;;
    esac
    vm_expect "$g" ping
done
counters=$(vm_counters)
vm_log "snapnet counters:"$'\n'"$counters"
# Any drop reason of a malformed ring or chain means the packed path misread the guest.
# The table lists only reasons that counted (name=N).
if echo "$counters" | grep -qE '(bad_desc_index|chain_too_long|address_out_of_range|write_only_on_tx|read_only_on_rx|bad_indirect|bad_avail_index)=[1-9]'; then
    vm_fail "malformed-chain drops counted over packed rings"
fi
vm_pass "qemu=$("$VM_QEMU" --version | head -1 | awk '{print $4}') packed=on"
