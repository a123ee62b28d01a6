#!/usr/bin/env bash
# Live migrations that go wrong, on one snapnet (QEMU 7.2): the guest must
# keep its network on whichever side runs. Guest b pings guest a every 10 ms
# the whole time (two ping loops of 30 s: cases 1-2, then case 3).
#  1. cancelled: a-in is added (`--incoming-for vnic0`), the destination QEMU
#     waits, the source migrates at 1 MiB/s (so it is still copying), an
#     upgrade is refused meanwhile (the guest's dirty log names this
#     process), then `migrate_cancel`;
#  2. the destination dies: the same, and the destination QEMU is killed
#     (SIGKILL) while the source copies.
#  3. snapnet dies (SIGKILL) while the source copies and is started again
#     with its config; the control plane adds a-in3 again (what it had added
#     over RPC is gone with the process) and lets the migration run at full
#     speed. Whether it completes or fails, the guest must answer pings at
#     the end on the side that runs, and that side's vNIC stays.
# After cases 1-2: the migration's status, "dirty-page logging off" for
# vnic0, the destination's vNIC removed, and the longest run of lost pings
# under 0.5 s. At the end: snapnet still runs and never panicked.
source "$(dirname "$0")/lib.sh"
vm_setup
command -v socat >/dev/null || vm_fail "socat is missing (vm-tests/run-all.sh installs it)"
SNAPNET=$VM_ROOT/target/release/snapnet
MAC_A=52:54:00:5a:00:01
dir=$VM_DIR
control=$dir/control.sock
PINGS=3000
VM_GUEST_TIMEOUT=300
config=$(vm_two_vnics)
vm_snapnet "$config"
vm_guest a "$dir/vnic0.sock" "$MAC_A" "snapnet.ip=10.0.0.1/24 snapnet.tests=hold snapnet.hold=200" \
    -- -qmp "unix:$dir/a.qmp,server=on,wait=off"
vm_guest b "$dir/vnic1.sock" 52:54:00:5a:00:02 \
    "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=pingloop,pingloop snapnet.loop_interval=0.01 snapnet.loop_count=$PINGS snapnet.loop_quiet=1 snapnet.wait_peer=60"
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

[ "$(vm_count b 'SNAPNET-LOG pingloop started')" -eq 1 ] || vm_fail "cases 1-2 outlasted the first ping loop"
for i in $(seq 600); do
    [ -n "$(vm_result b pingloop)" ] && break
    sleep 0.1
done
r=$(vm_result b pingloop)
sent=$(vm_field "$r" sent)
received=$(vm_field "$r" received)
gap=$(vm_field "$r" max_seq_gap)
[ -n "$received" ] && [ "$received" -gt 0 ] || vm_fail "no ping answered: $r"
[ "$gap" -lt 50 ] || vm_fail "the guest lost its network: $gap pings in a row lost: $r"
report="cancelled+destination-killed: longest_ping_gap=$((gap * 10))ms pings_lost=$((sent - received))/$sent"

# 3. snapnet is killed and started again while the guest migrates.
for i in $(seq 300); do
    [ "$(vm_count b 'SNAPNET-LOG pingloop started')" -ge 2 ] && break
    sleep 0.1
done
sleep 2
start_migration 3
sleep 1
vm_snapnet_kill9
sleep 1
vm_snapnet "$config"
vm_log "snapnet restarted while vnic0's guest migrates"
"$SNAPNET" ctl --socket "$control" vnic add --name a-in3 --mac "$MAC_A" \
    --vhost-socket "$dir/a-in3.sock" --incoming-for vnic0 >/dev/null ||
    vm_fail "case 3: vnic add --incoming-for refused after the restart"
# The source QEMU reconnects and, still migrating, starts its rings on the
# new process with logging on; only then may the copy finish.
for i in $(seq 100); do
    [ "$(logged on)" -ge 4 ] && break
    sleep 0.1
done
[ "$(logged on)" -ge 4 ] || vm_fail "case 3: the restarted snapnet does not log vnic0's writes"
read -r status _ <<<"$(vm_migration_status "$dir/a.qmp")"
[ "$status" = active ] || vm_fail "case 3: the migration is no longer under way after the restart ('$status')"
vm_qmp "$dir/a.qmp" '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":1073741824}}' >/dev/null
for i in $(seq 600); do
    read -r status _ <<<"$(vm_migration_status "$dir/a.qmp")"
    case "$status" in completed|failed|cancelled) break ;; esac
    sleep 0.1
done
case "$status" in
    completed)
        vm_qmp "$dir/a.qmp" '{"execute":"quit"}' >/dev/null 2>&1 || true
        "$SNAPNET" ctl --socket "$control" vnic remove vnic0 >/dev/null ||
            vm_fail "case 3: vnic remove vnic0 failed"
        runs="the destination (a-in3)" ;;
    failed|cancelled)
        error=$(vm_qmp "$dir/a.qmp" '{"execute":"query-migrate"}' | sed -n 's/.*"error-desc": *"\([^"]*\)".*/\1/p')
        vm_log "case 3: the migration $status: ${error:-no error given}"
        vm_guest_kill adst3
        "$SNAPNET" ctl --socket "$control" vnic remove a-in3 >/dev/null ||
            vm_fail "case 3: vnic remove a-in3 failed"
        runs="the source (vnic0)" ;;
    *) vm_fail "case 3: the migration did not end after snapnet's restart (status '$status')" ;;
esac
vm_log "case 3: the migration $status; the guest runs on $runs"

vm_wait b 120
r=$(vm_result b pingloop)
sent=$(vm_field "$r" sent)
received=$(vm_field "$r" received)
gap=$(vm_field "$r" max_seq_gap)
last=$(vm_field "$r" last_seq)
# The pings at the end (the last 2 s) are answered: the guest has its
# network back on the side that runs.
[ -n "$last" ] && [ "$last" != - ] && [ "$last" -ge $((PINGS - 200)) ] ||
    vm_fail "case 3: the guest's network did not come back after snapnet's restart: $r"
kill -0 "$VM_SNAPNET_PID" || vm_fail "snapnet died"
grep -aiE "panick" "$dir/snapnet.log" && vm_fail "snapnet panicked"
vm_pass "$report; snapnet restarted mid-migration: $status, runs on $runs, longest_ping_gap=$((gap * 10))ms pings_lost=$((sent - received))/$sent"
