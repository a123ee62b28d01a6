#!/usr/bin/env bash
# Live migration across two snapnet hosts joined by the VXLAN overlay, with
# QEMU 7.2 and QEMU 10 (SNAPNET_MIGRATION_QEMU=72, 10 or both, the default;
# one round each, on fresh daemons): hosts A and B are network namespaces
# whose uplinks meet in a third one (a bridge), as in overlay.sh. Guest C on
# host A sends guest A a 24 MiB random file over TCP and pings it every
# 10 ms. Midway the control plane adds vNIC a-in (same MAC, same network) on
# host B, a destination QEMU waits on it, and the source QEMU migrates there.
# Then, as a cloud control plane would: host A removes the source's vNIC and
# its overlay table says the MAC now lives on host B (`uplink update
# --overlay`). C's traffic must reach A on host B through the overlay: the
# file's sha256 matches, the pings come back. Reported: QEMU's downtime, the
# longest run of lost pings, the pings lost.
source "$(dirname "$0")/lib.sh"
vm_setup
command -v socat >/dev/null || vm_fail "socat is missing (vm-tests/run-all.sh installs it)"
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
host_config() { # dir name overlay-json vnics-json
    mkdir -p "$1/$2"
    cat >"$1/$2.json" <<JSON
{ "runtime_dir": "$1/$2", "control_socket": "$1/$2-control.sock",
  "vnics": [ $4 ],
  "uplinks": [ { "name": "fabric", "interface": "fabric", "overlay": $3 } ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1 } ] }
JSON
}
# migrate_once LABEL QEMU: one round on fresh daemons; sets RESULT.
migrate_once() {
    local l=$1 d=$VM_DIR/$1 i vxlan logged
    VM_QEMU=$2
    mkdir -p "$d"
    logged=$(grep -c "vma: dirty-page logging on" "$VM_DIR/snapnet.log" 2>/dev/null || true)
    logged=${logged:-0}
    host_config "$d" a "$(overlay 192.168.61.1 192.168.61.2 "$UNDERLAY_B")" \
        "{ \"name\": \"vma\", \"mac\": \"$MAC_A\", \"network\": 100, \"mtu\": 1450 },
         { \"name\": \"vmc\", \"mac\": \"$MAC_C\", \"network\": 100, \"mtu\": 1450 }"
    host_config "$d" b "$(overlay 192.168.61.2 192.168.61.1 "$UNDERLAY_A" "{ \"network\": 100, \"mac\": \"$MAC_A\", \"remote\": \"192.168.61.1\" }")" ""
    VM_NETNS=$A vm_snapnet "$d/a.json"
    ip netns exec "$B" "$SNAPNET" serve --config "$d/b.json" >>"$d/snapnet-b.log" 2>&1 &
    VM_SNAPNET_B=$!
    for _ in $(seq 100); do [ -S "$d/b-control.sock" ] && break; sleep 0.05; done
    [ -S "$d/b-control.sock" ] || vm_fail "$l: host B's snapnet did not start"
    vm_guest "${l}a" "$d/a/vma.sock" "$MAC_A" \
        "snapnet.ip=10.61.0.1/24 snapnet.mtu=1450 snapnet.tests=recvfile,hold snapnet.hold=60" \
        -- -qmp "unix:$d/a.qmp,server=on,wait=off"
    vm_guest "${l}c" "$d/a/vmc.sock" "$MAC_C" \
        "snapnet.ip=10.61.0.3/24 snapnet.peer=10.61.0.1 snapnet.mtu=1450 snapnet.tests=sendfile,pingloop,hold snapnet.file_mb=24 snapnet.hold_until=sendfile snapnet.hold=60 snapnet.loop_interval=0.01 snapnet.loop_count=$PINGS snapnet.loop_quiet=1 snapnet.wait_peer=60"
    for i in $(seq 1200); do
        [ "$(vm_count "${l}c" 'SNAPNET-LOG pingloop started')" -ge 1 ] && break
        sleep 0.1
    done
    [ "$(vm_count "${l}c" 'SNAPNET-LOG pingloop started')" -ge 1 ] || vm_fail "$l: guest c never started"
    sleep 2

    # Host B gets the destination's vNIC: same MAC, same network.
    "$SNAPNET" ctl --socket "$d/b-control.sock" call vnic.add \
        "{\"name\": \"a-in\", \"mac\": \"$MAC_A\", \"network\": 100, \"mtu\": 1450}" >/dev/null ||
        vm_fail "$l: host B refused vnic.add"
    vm_guest "${l}adst" "$d/b/a-in.sock" "$MAC_A" \
        "snapnet.ip=10.61.0.1/24 snapnet.mtu=1450 snapnet.tests=recvfile,hold snapnet.hold=60" \
        -- -incoming "unix:$d/migrate.sock"
    # The guest is unreachable from C between the migration's end and the
    # control plane's two updates below.
    vm_migrate "$d/a.qmp" "$d/migrate.sock"
    # The control plane: host A forgets the guest, and sends its MAC to host B.
    "$SNAPNET" ctl --socket "$d/a-control.sock" vnic remove vma >/dev/null ||
        vm_fail "$l: host A: vnic remove vma failed"
    overlay 192.168.61.1 192.168.61.2 "$UNDERLAY_B" \
        "{ \"network\": 100, \"mac\": \"$MAC_A\", \"remote\": \"192.168.61.2\" }" >"$d/a-moved.json"
    "$SNAPNET" ctl --socket "$d/a-control.sock" uplink update fabric --overlay "$d/a-moved.json" >/dev/null ||
        vm_fail "$l: host A: the overlay update was refused"
    overlay 192.168.61.2 192.168.61.1 "$UNDERLAY_A" >"$d/b-moved.json"
    "$SNAPNET" ctl --socket "$d/b-control.sock" uplink update fabric --overlay "$d/b-moved.json" >/dev/null ||
        vm_fail "$l: host B: the overlay update was refused"
    vm_qmp "$d/a.qmp" '{"execute":"quit"}' >/dev/null 2>&1 || true

    vm_migrated_file "${l}c" "${l}adst"
    vm_pingloop_figures "${l}c"
    [ "$VM_PINGS_GAP" -lt 500 ] || vm_fail "$l: $VM_PINGS_GAP pings in a row lost"
    vxlan=$("$SNAPNET" ctl --socket "$d/b-control.sock" --json uplink stats fabric | sed -n 's/^  "rx_packets": \([0-9]*\).*/\1/p' | head -1)
    [ "${vxlan:-0}" -gt 100 ] || vm_fail "$l: host B received only ${vxlan:-0} VXLAN frames: C's traffic did not follow the guest"
    [ "$(grep -c "vma: dirty-page logging on" "$VM_DIR/snapnet.log")" -gt "$logged" ] || vm_fail "$l: host A never logged dirty pages"
    vm_guest_kill "${l}adst"
    kill -INT "$VM_SNAPNET_PID" "$VM_SNAPNET_B" 2>/dev/null || true
    for i in $(seq 30); do kill -0 "$VM_SNAPNET_PID" 2>/dev/null || kill -0 "$VM_SNAPNET_B" 2>/dev/null || break; sleep 0.1; done
    VM_SNAPNET_PID="" VM_SNAPNET_B=""
    RESULT="$l: downtime=${VM_DOWNTIME:-?}ms longest_ping_gap=$((VM_PINGS_GAP * 10))ms pings_lost=$((VM_PINGS_SENT - VM_PINGS_RECEIVED))/$VM_PINGS_SENT vxlan_rx_on_b=$vxlan file=${VM_FILE_SUM:0:12}"
}

vm_migration_rounds migrate_once
vm_pass "across the overlay: $VM_RESULTS"
