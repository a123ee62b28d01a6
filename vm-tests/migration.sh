#!/usr/bin/env bash
# Live migration between two vNICs of one snapnet, with QEMU 10 (and QEMU
# 7.2, see SNAPNET_MIGRATION_QEMU below; source and destination of the same
# version).
#
# Guest a (the one that moves) receives a 24 MiB random file over TCP from
# guest b while b pings it every 10 ms. Midway, the control plane adds vNIC
# `a-in` (`snapnet ctl vnic add --incoming-for vnic0`, same MAC), a
# destination QEMU starts on it with `-incoming`, and the source QEMU is told
# to `migrate` (QMP over a unix socket); afterwards vnic0 is removed. The
# file's sha256 must match on both sides (a page snapnet wrote but did not
# mark in the dirty log would reach the destination stale), the stream must
# finish on the destination, and snapnet must have logged dirty pages and
# moved the MAC to a-in. Reported: QEMU's downtime, the longest run of lost
# pings (x 10 ms) and the pings lost in all.
source "$(dirname "$0")/lib.sh"
vm_setup
command -v socat >/dev/null || vm_fail "socat is missing (vm-tests/run-all.sh installs it)"
out=$(bash "$VM_ROOT/qemu-scripts/fetch-qemu10.sh") || vm_fail "cannot fetch QEMU 10"
eval "$(echo "$out" | grep -E '^QEMU10=')"
SNAPNET=$VM_ROOT/target/release/snapnet
PINGS=3000
MAC_A=52:54:00:5a:00:01

# migrate_once LABEL QEMU: one whole scenario on a fresh snapnet; sets
# RESULT to "LABEL: downtime=..ms ..." on success.
migrate_once() {
    local label=$1 qemu=$2 control dir i reply status downtime="" r sent received gap sum_a sum_b
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
        "snapnet.ip=10.0.0.1/24 snapnet.tests=recvfile,hold snapnet.hold=60" \
        -- -qmp "unix:$dir/a.qmp,server=on,wait=off"
    VM_QEMU=$qemu vm_guest "$b" "$dir/vnic1.sock" 52:54:00:5a:00:02 \
        "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=sendfile,pingloop,hold snapnet.file_mb=24 snapnet.hold_until=sendfile snapnet.hold=60 snapnet.loop_interval=0.01 snapnet.loop_count=$PINGS snapnet.loop_quiet=1 snapnet.wait_peer=60"
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
    for i in $(seq 100); do [ -S "$dir/migrate.sock" ] && break; sleep 0.1; done
    [ -S "$dir/migrate.sock" ] || vm_fail "$label: the destination QEMU is not listening"
    reply=$(vm_qmp "$dir/a.qmp" '{"execute":"migrate","arguments":{"uri":"unix:'"$dir"'/migrate.sock"}}')
    echo "$reply" | grep -q '"error"' && vm_fail "$label: migrate refused: $reply"
    status=""
    for i in $(seq 600); do
        read -r status downtime <<<"$(vm_migration_status "$dir/a.qmp")"
        case "$status" in completed|failed|cancelled) break ;; esac
        sleep 0.1
    done
    [ "$status" = completed ] || vm_fail "$label: migration ended as '$status'"
    vm_qmp "$dir/a.qmp" '{"execute":"quit"}' >/dev/null 2>&1 || true
    # The guest runs on a-in now: the control plane removes the source.
    "$SNAPNET" ctl --socket "$control" vnic remove vnic0 >/dev/null ||
        vm_fail "$label: vnic remove vnic0 failed"

    vm_wait "$b" 180
    for i in $(seq 600); do
        [ -n "$(vm_result "${a}dst" recvfile)" ] && break
        sleep 0.1
    done
    vm_expect "${a}dst" recvfile
    r=$(vm_result "$b" sendfile)
    sum_b=$(vm_field "$r" sha256)
    sum_a=$(vm_field "$(vm_result "${a}dst" recvfile)" sha256)
    [ -n "$sum_b" ] && [ "$sum_a" = "$sum_b" ] ||
        vm_fail "$label: the file changed on its way: sent $sum_b ($(vm_field "$r" bytes) B), received $sum_a ($(vm_field "$(vm_result "${a}dst" recvfile)" bytes) B)"
    r=$(vm_result "$b" pingloop)
    sent=$(vm_field "$r" sent)
    received=$(vm_field "$r" received)
    gap=$(vm_field "$r" max_seq_gap)
    [ -n "$received" ] && [ "$received" -gt 0 ] || vm_fail "$label: no ping answered: $r"
    # The guest answers on the destination: pings after the move came back.
    [ "$gap" -lt 500 ] || vm_fail "$label: $gap pings in a row lost: $r"
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
    RESULT="$label: downtime=${downtime:-?}ms longest_ping_gap=$((gap * 10))ms pings_lost=$((sent - received))/$sent file=${sum_a:0:12}"
}

# SNAPNET_MIGRATION_QEMU=72, 10 or both (the default: 10). With QEMU 7.2
# (TCG, INTx: launch-guest.sh gives it vectors=0) the destination guest's
# kernel crashed right after resuming in 4 of 7 runs, and in 1 of 4 runs of
# the same scenario through QEMU 7.2's own virtio-net without snapnet
# (docs/migration.md): a QEMU 7.2 TCG migration problem. CI runs QEMU 10.
results=()
want=${SNAPNET_MIGRATION_QEMU:-10}
if [ "$want" = 72 ] || [ "$want" = both ]; then
    migrate_once qemu72 qemu-system-x86_64
    vm_log "$RESULT"
    results+=("$RESULT")
fi
if [ "$want" = 10 ] || [ "$want" = both ]; then
    migrate_once qemu10 "$QEMU10"
    vm_log "$RESULT"
    results+=("$RESULT")
fi
vm_pass "$(IFS=';'; echo "${results[*]}")"
