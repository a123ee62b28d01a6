#!/usr/bin/env bash
# Live migration between two vNICs of one snapnet, with QEMU 7.2 and QEMU 10
# (source and destination of the same version; SNAPNET_MIGRATION_QEMU below).
#
# Guest a (the one that moves) receives a 24 MiB random file over TCP and a
# 20 s iperf3 stream at 100 Mbit/s from guest b while b pings it every 10 ms.
# Midway, the control plane adds vNIC `a-in` (`snapnet ctl vnic add
# --incoming-for vnic0`, same MAC), a destination QEMU starts on it with
# `-incoming`, and the source QEMU is told to `migrate` (QMP over a unix
# socket); afterwards vnic0 is removed. The file's sha256 must match on both
# sides (a page snapnet wrote but did not mark in the dirty log would reach
# the destination stale), the stream must finish on the destination, iperf3
# must end without error, and snapnet must have logged dirty pages and moved
# the MAC to a-in. Reported: QEMU's downtime, the longest run of lost pings
# (x 10 ms), the pings lost in all, iperf3's rate and retransmits.
source "$(dirname "$0")/lib.sh"
vm_setup
command -v socat >/dev/null || vm_fail "socat is missing (vm-tests/run-all.sh installs it)"
SNAPNET=$VM_ROOT/target/release/snapnet
PINGS=3000
# iperf3 from b to a at a fixed rate, across the migration (as fast as it
# could go, it would take the CPU the TCG guests and the migration need).
IPERF_SECONDS=20
IPERF_BITRATE=100M
MAC_A=52:54:00:5a:00:01

# migrate_once LABEL QEMU: one whole scenario on a fresh snapnet; sets
# RESULT to "LABEL: downtime=..ms ..." on success.
migrate_once() {
    local label=$1 qemu=$2 control dir i r iperf
    dir=$VM_DIR/$label
    mkdir -p "$dir"
    control=$dir/control.sock
    cat >"$dir/config.json" <<JSON
{ "runtime_dir": "$dir", "vnics": [
    { "name": "vnic0", "mac": "$MAC_A" },
    { "name": "vnic1", "mac": "52:54:00:5a:00:02" } ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1 } ] }
JSON
    "$SNAPNET" serve --config "$dir/config.json" >>"$VM_DIR/snapnet-$label.log" 2>&1 &
    VM_SNAPNET_PID=$!
    for i in $(seq 100); do
        grep -q "running" "$VM_DIR/snapnet-$label.log" 2>/dev/null && break
        sleep 0.05
    done
    local a=${label}a b=${label}b
    VM_QEMU=$qemu vm_guest "$a" "$dir/vnic0.sock" "$MAC_A" \
        "snapnet.ip=10.0.0.1/24 snapnet.tests=iperf-server,recvfile,hold snapnet.hold=60" \
        -- -qmp "unix:$dir/a.qmp,server=on,wait=off"
    VM_QEMU=$qemu vm_guest "$b" "$dir/vnic1.sock" 52:54:00:5a:00:02 \
        "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=sendfile,iperf-client,pingloop,hold snapnet.iperf_background=1 snapnet.iperf_time=$IPERF_SECONDS snapnet.iperf_bitrate=$IPERF_BITRATE snapnet.file_mb=24 snapnet.hold_until=sendfile snapnet.hold=60 snapnet.loop_interval=0.01 snapnet.loop_count=$PINGS snapnet.loop_quiet=1 snapnet.wait_peer=60"
    for i in $(seq 1200); do
        [ "$(vm_count "$b" 'SNAPNET-LOG pingloop started')" -ge 1 ] && break
        sleep 0.1
    done
    [ "$(vm_count "$b" 'SNAPNET-LOG pingloop started')" -ge 1 ] || vm_fail "$label: guest b never started"
    sleep 2

    # The control plane plugs in the destination's vNIC, with the same MAC.
    "$SNAPNET" ctl --socket "$control" vnic add --name a-in --mac "$MAC_A" \
        --vhost-socket "$dir/a-in.sock" --incoming-for vnic0 >/dev/null ||
        vm_fail "$label: vnic add --incoming-for refused"
    VM_QEMU=$qemu vm_guest "${a}dst" "$dir/a-in.sock" "$MAC_A" \
        "snapnet.ip=10.0.0.1/24 snapnet.tests=recvfile,hold snapnet.hold=60" \
        -- -incoming "unix:$dir/migrate.sock"
    vm_migrate "$dir/a.qmp" "$dir/migrate.sock"
    vm_qmp "$dir/a.qmp" '{"execute":"quit"}' >/dev/null 2>&1 || true
    # The guest runs on a-in now: the control plane removes the source.
    "$SNAPNET" ctl --socket "$control" vnic remove vnic0 >/dev/null ||
        vm_fail "$label: vnic remove vnic0 failed"

    vm_migrated_file "$b" "${a}dst"
    r=$(vm_result "$b" iperf-client)
    [ "$(vm_field "$r" status)" = pass ] || vm_fail "$label: iperf3 across the migration failed: $r"
    iperf="iperf3=$(vm_field "$r" recv_gbps)Gbit/s/${IPERF_SECONDS}s retransmits=$(vm_field "$r" retransmits)"
    vm_pingloop_figures "$b"
    # The guest answers on the destination: pings after the move came back.
    [ "$VM_PINGS_GAP" -lt 500 ] || vm_fail "$label: $VM_PINGS_GAP pings in a row lost"
    grep -q "vnic0: dirty-page logging on" "$VM_DIR/snapnet-$label.log" ||
        vm_fail "$label: snapnet never logged dirty pages"
    grep -q "a-in: its guest's rings started: .* goes to it" "$VM_DIR/snapnet-$label.log" ||
        vm_fail "$label: the MAC did not move to a-in"
    grep -aiE "vhost.*(fail|error)|migration.*(fail|error)" "$VM_DIR/$a.qemu.log" "$VM_DIR/${a}dst.qemu.log" >&2 &&
        vm_fail "$label: QEMU reported a vhost or migration error"
    vm_guest_kill "${a}dst"
    kill -INT "$VM_SNAPNET_PID" 2>/dev/null || true
    for i in $(seq 30); do kill -0 "$VM_SNAPNET_PID" 2>/dev/null || break; sleep 0.1; done
    VM_SNAPNET_PID=""
    RESULT="$label: downtime=${VM_DOWNTIME:-?}ms longest_ping_gap=$((VM_PINGS_GAP * 10))ms pings_lost=$((VM_PINGS_SENT - VM_PINGS_RECEIVED))/$VM_PINGS_SENT $iperf file=${VM_FILE_SUM:0:12}"
}

# SNAPNET_MIGRATION_QEMU=72, 10 or both (the default). QEMU 7.2 under TCG
# loses dirty pages of its own (see launch-guest.sh, which sizes 7.2's TCG
# guests around it); without that, its destination guests crashed after
# resuming in 4 of 7 runs.
vm_migration_rounds migrate_once
vm_pass "$VM_RESULTS"
