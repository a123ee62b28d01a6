#!/usr/bin/env bash
# snapnet is killed (SIGKILL) and restarted while two guests keep pinging each
# other: with snapnet as socket server (QEMU reconnect=1) and as socket client
# (QEMU server=on). Traffic must resume without rebooting the guests; the
# outage (largest gap between ping replies, 0.2 s interval) is reported.
source "$(dirname "$0")/lib.sh"
vm_setup
report=""
for role in server client; do
    : > "$VM_DIR/snapnet.log"
    if [ "$role" = server ]; then
        cfg=$(vm_two_vnics)
        s0=$VM_DIR/vnic0.sock; s1=$VM_DIR/vnic1.sock
    else
        s0=$VM_DIR/vm0.sock; s1=$VM_DIR/vm1.sock
        cfg=$(vm_config client "[
          { \"name\": \"vnic0\", \"mac\": \"52:54:00:5a:00:01\", \"role\": \"client\", \"socket\": \"$s0\" },
          { \"name\": \"vnic1\", \"mac\": \"52:54:00:5a:00:02\", \"role\": \"client\", \"socket\": \"$s1\" } ]")
    fi
    vm_snapnet "$cfg"
    vm_guest "a$role" "$s0" 52:54:00:5a:00:01 \
        "snapnet.ip=10.0.0.1/24 snapnet.peer=10.0.0.2 snapnet.tests=hold snapnet.hold=60" --socket-role "$role"
    vm_guest "b$role" "$s1" 52:54:00:5a:00:02 \
        "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=pingloop snapnet.duration=30" --socket-role "$role"
    # Let pings flow, then kill snapnet hard and start it again.
    for i in $(seq 600); do [ "$(grep -c "SNAPNET-PING" "$VM_DIR/b$role.log" 2>/dev/null)" -ge 10 ] && break; sleep 0.1; done
    [ "$(grep -c "SNAPNET-PING" "$VM_DIR/b$role.log" 2>/dev/null)" -ge 10 ] || vm_fail "$role: pings never flowed"
    before=$(grep -c "SNAPNET-PING" "$VM_DIR/b$role.log")
    vm_snapnet_kill9
    sleep 1
    vm_snapnet "$cfg"
    vm_wait "b$role" 120
    after=$(grep -c "SNAPNET-PING" "$VM_DIR/b$role.log")
    [ "$after" -gt "$((before + 5))" ] || vm_fail "$role: pings did not resume after the restart ($before -> $after replies)"
    # Largest icmp_seq gap between consecutive replies, times the 0.2 s interval.
    gap=$(grep -a "SNAPNET-PING" "$VM_DIR/b$role.log" | sed -n 's/.*icmp_seq=\([0-9]*\).*/\1/p' |
        awk 'NR > 1 && $1 - prev > max { max = $1 - prev } { prev = $1 } END { printf "%.1f", max * 0.2 }')
    report="$report $role:outage=${gap}s(incl. 1s before restart)"
    vm_snapnet_kill9
    pkill -9 -f "$VM_DIR/a$role" 2>/dev/null || true
    kill -9 "$(cat "$VM_DIR/a$role.pid" 2>/dev/null)" 2>/dev/null || true
done
vm_pass "$report"
