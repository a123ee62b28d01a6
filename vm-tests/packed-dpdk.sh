#!/usr/bin/env bash
# DPDK's virtio-user frontend with packed virtqueues (packed_vq=1) on both
# snapnet vNICs: one dpdk-testpmd with the two ports in mac forwarding, primed
# with `start tx_first`, keeps frames looping vnic0 -> vnic1 -> vnic0 through
# snapnet. Both ports must receive, snapnet must log packed virtqueues for
# both vNICs and count no malformed-chain drop. No VM; needs root
# (dpdk-testpmd from dpdk-dev, no hugepages).
source "$(dirname "$0")/lib.sh"
VM_DIR=$(mktemp -d "/tmp/snapnet-vm-$VM_SCENARIO.XXXXXX")
trap vm_cleanup EXIT
trap 'vm_fail "interrupted"' INT TERM
command -v dpdk-testpmd >/dev/null || vm_fail "dpdk-testpmd not found (Debian package dpdk-dev)"
(cd "$VM_ROOT" && cargo build --release --bin snapnet >/dev/null 2>&1) || vm_fail "cannot build snapnet"
cfg=$(vm_two_vnics)
vm_snapnet "$cfg"
m0=52:54:00:5a:00:01 m1=52:54:00:5a:00:02
mkfifo "$VM_DIR/cmd"
# DPDK 22.11's virtio-user does not take the MAC from the device: pass it, or
# snapnet's anti-spoofing drops everything.
timeout -k 5 60 dpdk-testpmd --no-pci --no-huge -m 256 --no-shconf --file-prefix "snpk$$" \
    --lcores '0@0,1@0' \
    --vdev "net_virtio_user0,path=$VM_DIR/vnic0.sock,mac=$m0,packed_vq=1,queue_size=256" \
    --vdev "net_virtio_user1,path=$VM_DIR/vnic1.sock,mac=$m1,packed_vq=1,queue_size=256" \
    -- -i --total-num-mbufs=16384 --forward-mode=mac --eth-peer=0,$m1 --eth-peer=1,$m0 \
    <"$VM_DIR/cmd" >"$VM_DIR/testpmd.log" 2>&1 &
VM_PIDS+=($!)
exec 3>"$VM_DIR/cmd"
sleep 2
echo "start tx_first 8" >&3
sleep 4
echo "stop" >&3
sleep 1
echo "quit" >&3
exec 3>&-
wait "${VM_PIDS[-1]}" || vm_fail "testpmd failed"
# "stop" prints per-port forward statistics; take each port's RX-packets.
rx=$(awk '/Forward statistics for port/ {p = $(NF - 1)} p != "" && /RX-packets:/ {print p "=" $2; p = ""}' "$VM_DIR/testpmd.log")
vm_log "testpmd RX: $(echo $rx)"
for port in 0 1; do
    n=$(echo "$rx" | sed -n "s/^$port=//p" | head -1)
    [ "${n:-0}" -gt 100 ] || vm_fail "port $port received ${n:-nothing} over packed rings"
done
for v in vnic0 vnic1; do
    grep -q "$v: features .* acked, packed virtqueues" "$VM_DIR/snapnet.log" \
        || vm_fail "$v: snapnet did not log packed virtqueues"
done
counters=$(vm_counters)
vm_log "snapnet counters:"$'\n'"$counters"
# The table lists only reasons that counted (name=N).
if echo "$counters" | grep -qE '(bad_desc_index|chain_too_long|address_out_of_range|write_only_on_tx|read_only_on_rx|bad_indirect|bad_avail_index)=[1-9]'; then
    vm_fail "malformed-chain drops counted over packed rings"
fi
vm_pass "rx $(echo $rx)"
