#!/usr/bin/env bash
# snapnet is killed (SIGKILL) and restarted while two guests keep pinging each
# other: with snapnet as socket server (QEMU reconnect=1) and as socket client
# (QEMU server=on). Traffic must resume without rebooting the guests. While
# snapnet is away the guests' packets wait in their virtio rings and go out
# when it is back, so the outage shows as the largest ping RTT (and as lost
# pings, if any); both are reported. snapnet is down for 1 s of it.
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
        "snapnet.ip=10.0.0.1/24 snapnet.peer=10.0.0.2 snapnet.tests=hold snapnet.hold=40" --socket-role "$role"
    vm_guest "b$role" "$s1" 52:54:00:5a:00:02 \
        "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=pingloop snapnet.duration=15" --socket-role "$role"
    # Let pings flow, then kill snapnet hard and start it again.
    for i in $(seq 600); do [ "$(vm_count "b$role" SNAPNET-PING)" -ge 10 ] && break; sleep 0.1; done
    before=$(vm_count "b$role" SNAPNET-PING)
    [ "$before" -ge 10 ] || vm_fail "$role: pings never flowed"
    vm_snapnet_kill9
    sleep 1
    vm_snapnet "$cfg"
    vm_wait "b$role" 120
    after=$(vm_count "b$role" SNAPNET-PING)
    [ "$after" -gt "$((before + 5))" ] || vm_fail "$role: pings did not resume after the restart ($before -> $after replies)"
    r=$(vm_result "b$role" pingloop)
    maxrtt=$(grep -a "SNAPNET-PING" "$VM_DIR/b$role.log" | sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' |
        sort -g | tail -1)
    report="$report $role:max_rtt=${maxrtt}ms,lost=$(( $(vm_field "$r" sent) - $(vm_field "$r" received) ))"
    vm_snapnet_kill9
    vm_guest_kill "a$role"
done
vm_pass "$report"
