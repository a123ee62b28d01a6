#!/usr/bin/env bash
# Live migration across two snapnet hosts joined by the VXLAN overlay
# (QEMU 10): hosts A and B are network namespaces whose uplinks meet in a
# third one (a bridge), as in overlay.sh. Guest C on host A sends guest A a
# 24 MiB random file over TCP and pings it every 10 ms. Midway the control
# plane adds vNIC a-in (same MAC, same network) on host B, a destination QEMU
# waits on it, and the source QEMU migrates there. Then, as a cloud control
# plane would: host A removes the source's vNIC and its overlay table says
# the MAC now lives on host B (`uplink update --overlay`). C's traffic must
# reach A on host B through the overlay: the file's sha256 matches, the pings
# come back. Reported: QEMU's downtime, the longest run of lost pings, the
# pings lost.
source "$(dirname "$0")/lib.sh"
vm_setup
command -v socat >/dev/null || vm_fail "socat is missing (vm-tests/run-all.sh installs it)"
out=$(bash "$VM_ROOT/qemu-scripts/fetch-qemu10.sh") || vm_fail "cannot fetch QEMU 10"
eval "$(echo "$out" | grep -E '^QEMU10=')"
VM_QEMU=$QEMU10
SNAPNET=$VM_ROOT/target/release/snapnet
vm_two_hosts "snvm$$" 192.168.61
A=$VM_HOST_A B=$VM_HOST_B
UNDERLAY_A=$VM_UNDERLAY_A UNDERLAY_B=$VM_UNDERLAY_B
MAC_A=52:54:00:61:00:0a
MAC_C=52:54:00:61:00:0c
PINGS=3000
# overlay LOCAL REMOTE REMOTE_UNDERLAY_MAC [MACS-JSON]
overlay() {
    echo "{ \"local_ip\": \"$1\", \"remotes\": [ { \"ip\": \"$2\", \"mac\": \"$3\", \"networks\": [100] } ], \"macs\": [ ${4:-} ] }"
}
host_config() { # name overlay-json vnics-json
    cat >"$VM_DIR/$1.json" <<JSON
{ "runtime_dir": "$VM_DIR/$1", "control_socket": "$VM_DIR/$1-control.sock",
  "vnics": [ $3 ],
  "uplinks": [ { "name": "fabric", "interface": "fabric", "overlay": $2 } ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1 } ] }
JSON
}
mkdir -p "$VM_DIR/a" "$VM_DIR/b"
host_config a "$(overlay 192.168.61.1 192.168.61.2 "$UNDERLAY_B")" \
    "{ \"name\": \"vma\", \"mac\": \"$MAC_A\", \"network\": 100, \"mtu\": 1450 },
     { \"name\": \"vmc\", \"mac\": \"$MAC_C\", \"network\": 100, \"mtu\": 1450 }"
host_config b "$(overlay 192.168.61.2 192.168.61.1 "$UNDERLAY_A" "{ \"network\": 100, \"mac\": \"$MAC_A\", \"remote\": \"192.168.61.1\" }")" ""
VM_NETNS=$A vm_snapnet "$VM_DIR/a.json"
ip netns exec "$B" "$SNAPNET" serve --config "$VM_DIR/b.json" >>"$VM_DIR/snapnet-b.log" 2>&1 &
VM_SNAPNET_B=$!
for _ in $(seq 100); do [ -S "$VM_DIR/b-control.sock" ] && break; sleep 0.05; done
[ -S "$VM_DIR/b-control.sock" ] || vm_fail "host B's snapnet did not start"
vm_guest a "$VM_DIR/a/vma.sock" "$MAC_A" \
    "snapnet.ip=10.61.0.1/24 snapnet.mtu=1450 snapnet.tests=recvfile,hold snapnet.hold=60" \
    -- -qmp "unix:$VM_DIR/a.qmp,server=on,wait=off"
vm_guest c "$VM_DIR/a/vmc.sock" "$MAC_C" \
    "snapnet.ip=10.61.0.3/24 snapnet.peer=10.61.0.1 snapnet.mtu=1450 snapnet.tests=sendfile,pingloop,hold snapnet.file_mb=24 snapnet.hold_until=sendfile snapnet.hold=60 snapnet.loop_interval=0.01 snapnet.loop_count=$PINGS snapnet.loop_quiet=1 snapnet.wait_peer=60"
for i in $(seq 1200); do
    [ "$(vm_count c 'SNAPNET-LOG pingloop started')" -ge 1 ] && break
    sleep 0.1
done
[ "$(vm_count c 'SNAPNET-LOG pingloop started')" -ge 1 ] || vm_fail "guest c never started"
sleep 2

# Host B gets the destination's vNIC: same MAC, same network.
"$SNAPNET" ctl --socket "$VM_DIR/b-control.sock" call vnic.add \
    "{\"name\": \"a-in\", \"mac\": \"$MAC_A\", \"network\": 100, \"mtu\": 1450}" >/dev/null ||
    vm_fail "host B refused vnic.add"
vm_guest adst "$VM_DIR/b/a-in.sock" "$MAC_A" \
    "snapnet.ip=10.61.0.1/24 snapnet.mtu=1450 snapnet.tests=recvfile,hold snapnet.hold=60" \
    -- -incoming "unix:$VM_DIR/migrate.sock"
for i in $(seq 100); do [ -S "$VM_DIR/migrate.sock" ] && break; sleep 0.1; done
[ -S "$VM_DIR/migrate.sock" ] || vm_fail "the destination QEMU is not listening"
reply=$(vm_qmp "$VM_DIR/a.qmp" '{"execute":"migrate","arguments":{"uri":"unix:'"$VM_DIR"'/migrate.sock"}}')
echo "$reply" | grep -q '"error"' && vm_fail "migrate refused: $reply"
status="" downtime=""
# Polled quickly: the guest is unreachable from C between the migration's
# end and the control plane's two updates below.
for i in $(seq 1200); do
    read -r status downtime <<<"$(VM_QMP_WAIT=0.05 vm_migration_status "$VM_DIR/a.qmp")"
    case "$status" in completed|failed|cancelled) break ;; esac
done
[ "$status" = completed ] || vm_fail "migration ended as '$status'"
# The control plane: host A forgets the guest, and sends its MAC to host B.
"$SNAPNET" ctl --socket "$VM_DIR/a-control.sock" vnic remove vma >/dev/null ||
    vm_fail "host A: vnic remove vma failed"
overlay 192.168.61.1 192.168.61.2 "$UNDERLAY_B" \
    "{ \"network\": 100, \"mac\": \"$MAC_A\", \"remote\": \"192.168.61.2\" }" >"$VM_DIR/a-moved.json"
"$SNAPNET" ctl --socket "$VM_DIR/a-control.sock" uplink update fabric --overlay "$VM_DIR/a-moved.json" >/dev/null ||
    vm_fail "host A: the overlay update was refused"
overlay 192.168.61.2 192.168.61.1 "$UNDERLAY_A" >"$VM_DIR/b-moved.json"
"$SNAPNET" ctl --socket "$VM_DIR/b-control.sock" uplink update fabric --overlay "$VM_DIR/b-moved.json" >/dev/null ||
    vm_fail "host B: the overlay update was refused"
vm_qmp "$VM_DIR/a.qmp" '{"execute":"quit"}' >/dev/null 2>&1 || true

vm_wait c 180
for i in $(seq 600); do
    [ -n "$(vm_result adst recvfile)" ] && break
    sleep 0.1
done
vm_expect adst recvfile
r=$(vm_result c sendfile)
sum_c=$(vm_field "$r" sha256)
sum_a=$(vm_field "$(vm_result adst recvfile)" sha256)
[ -n "$sum_c" ] && [ "$sum_a" = "$sum_c" ] ||
    vm_fail "the file changed on its way: sent $sum_c, received $sum_a"
r=$(vm_result c pingloop)
sent=$(vm_field "$r" sent)
received=$(vm_field "$r" received)
gap=$(vm_field "$r" max_seq_gap)
[ -n "$received" ] && [ "$received" -gt 0 ] || vm_fail "no ping answered: $r"
[ "$gap" -lt 500 ] || vm_fail "$gap pings in a row lost: $r"
vxlan=$("$SNAPNET" ctl --socket "$VM_DIR/b-control.sock" --json uplink stats fabric | sed -n 's/^  "rx_packets": \([0-9]*\).*/\1/p' | head -1)
[ "${vxlan:-0}" -gt 100 ] || vm_fail "host B received only ${vxlan:-0} VXLAN frames: C's traffic did not follow the guest"
grep -q "vma: dirty-page logging on" "$VM_DIR/snapnet.log" || vm_fail "host A never logged dirty pages"
vm_pass "across the overlay: downtime=${downtime:-?}ms longest_ping_gap=$((gap * 10))ms pings_lost=$((sent - received))/$sent vxlan_rx_on_b=$vxlan file=${sum_a:0:12}"
