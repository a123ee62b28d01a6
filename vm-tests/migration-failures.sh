#!/usr/bin/env bash
# Live migrations that do not complete, on one snapnet (QEMU 7.2): the guest
# must keep its network on the source throughout, and snapnet must stop
# logging. Guest b pings guest a every 10 ms the whole time.
#  1. cancelled: a-in is added (`--incoming-for vnic0`), the destination QEMU
#     waits, the source migrates at 1 MiB/s (so it is still copying), an
#     upgrade is refused meanwhile (the guest's dirty log names this
#     process), then `migrate_cancel`;
#  2. the destination dies: the same, and the destination QEMU is killed
#     (SIGKILL) while the source copies.
# After each: the migration's status, "dirty-page logging off" for vnic0,
# and the destination's vNIC removed. At the end: the longest run of lost
# pings stays under 0.5 s, snapnet still runs.
source "$(dirname "$0")/lib.sh"
vm_setup
command -v socat >/dev/null || vm_fail "socat is missing (vm-tests/run-all.sh installs it)"
SNAPNET=$VM_ROOT/target/release/snapnet
MAC_A=52:54:00:5a:00:01
dir=$VM_DIR
control=$dir/control.sock
vm_snapnet "$(vm_two_vnics)"
vm_guest a "$dir/vnic0.sock" "$MAC_A" "snapnet.ip=10.0.0.1/24 snapnet.tests=hold snapnet.hold=150" \
    -- -qmp "unix:$dir/a.qmp,server=on,wait=off"
vm_guest b "$dir/vnic1.sock" 52:54:00:5a:00:02 \
    "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=pingloop snapnet.loop_interval=0.01 snapnet.loop_count=4000 snapnet.loop_quiet=1 snapnet.wait_peer=60"
for i in $(seq 1200); do
    [ "$(vm_count b 'SNAPNET-LOG pingloop started')" -ge 1 ] && break
    sleep 0.1
done
[ "$(vm_count b 'SNAPNET-LOG pingloop started')" -ge 1 ] || vm_fail "guest b never started"

logged() { grep -c "vnic0: dirty-page logging $1" "$dir/snapnet.log" || true; }

# start_migration N: a-inN and its waiting QEMU, then a slow migration to it;
# returns once QEMU copies and snapnet logs vnic0's writes (the Nth time).
start_migration() {
    local n=$1 i status
    "$SNAPNET" ctl --socket "$control" vnic add --name "a-in$n" --mac "$MAC_A" \
        --vhost-socket "$dir/a-in$n.sock" --incoming-for vnic0 >/dev/null ||
        vm_fail "case $n: vnic add --incoming-for refused"
    vm_guest "adst$n" "$dir/a-in$n.sock" "$MAC_A" "snapnet.ip=10.0.0.1/24 snapnet.tests=hold" \
        -- -incoming "unix:$dir/migrate$n.sock"
    for i in $(seq 100); do [ -S "$dir/migrate$n.sock" ] && break; sleep 0.1; done
    [ -S "$dir/migrate$n.sock" ] || vm_fail "case $n: the destination QEMU is not listening"
    vm_qmp "$dir/a.qmp" '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":1048576}}' \
        '{"execute":"migrate","arguments":{"uri":"unix:'"$dir/migrate$n.sock"'"}}' | grep '"error"' &&
        vm_fail "case $n: migrate refused"
    for i in $(seq 100); do
        read -r status _ <<<"$(vm_migration_status "$dir/a.qmp")"
        [ "$status" = active ] && [ "$(logged on)" -ge "$n" ] && return 0
        sleep 0.1
    done
    vm_fail "case $n: no migration under way (status '$status', logging on $(logged on) times)"
}

# ended N STATUS: the source's migration ended as STATUS, logging went off,
# and the control plane removes a-inN.
ended() {
    local n=$1 want=$2 i status
    for i in $(seq 200); do
        read -r status _ <<<"$(vm_migration_status "$dir/a.qmp")"
        [ "$status" = "$want" ] && [ "$(logged off)" -ge "$n" ] && break
        sleep 0.1
    done
    [ "$status" = "$want" ] || vm_fail "case $n: migration ended as '$status', not $want"
    [ "$(logged off)" -ge "$n" ] || vm_fail "case $n: snapnet still logs vnic0's writes"
    vm_guest_kill "adst$n"
    "$SNAPNET" ctl --socket "$control" vnic remove "a-in$n" >/dev/null ||
        vm_fail "case $n: vnic remove a-in$n failed"
}

# 1. Cancelled halfway, an upgrade refused meanwhile.
sleep 2
start_migration 1
if out=$("$SNAPNET" ctl --socket "$control" upgrade 2>&1); then
    vm_fail "an upgrade went ahead while vnic0's guest migrated: $out"
fi
echo "$out" | grep -q "live-migrated" || vm_fail "the upgrade's refusal does not say why: $out"
vm_log "upgrade refused: $out"
sleep 1
vm_qmp "$dir/a.qmp" '{"execute":"migrate_cancel"}' >/dev/null
ended 1 cancelled
vm_log "cancelled: vnic0 logs no more"

# 2. The destination QEMU dies while the source copies.
sleep 2
start_migration 2
sleep 1
vm_guest_kill adst2
ended 2 failed
vm_log "destination killed: the migration failed, vnic0 logs no more"

vm_wait b 120
r=$(vm_result b pingloop)
sent=$(vm_field "$r" sent)
received=$(vm_field "$r" received)
gap=$(vm_field "$r" max_seq_gap)
[ -n "$received" ] && [ "$received" -gt 0 ] || vm_fail "no ping answered: $r"
[ "$gap" -lt 50 ] || vm_fail "the guest lost its network: $gap pings in a row lost: $r"
kill -0 "$VM_SNAPNET_PID" || vm_fail "snapnet died"
grep -aiE "panick" "$dir/snapnet.log" && vm_fail "snapnet panicked"
vm_pass "cancelled and destination-killed migrations: longest_ping_gap=$((gap * 10))ms pings_lost=$((sent - received))/$sent"
