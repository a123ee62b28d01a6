#!/usr/bin/env bash
# snapnet is upgraded three times in a row (`snapnet ctl upgrade`) while two
# guests, one on Debian's QEMU 7.2 and one on QEMU 10, ping each other every
# 10 ms and run an iperf3 TCP stream. No ping may be lost, neither guest's
# eth0 may see its carrier change, and neither QEMU may log a vhost-user
# disconnect: the guests do not notice. The upgrades' blackouts, the largest
# ping RTT and the iperf3 rate are reported.
source "$(dirname "$0")/lib.sh"
vm_setup
out=$(bash "$VM_ROOT/qemu-scripts/fetch-qemu10.sh") || vm_fail "cannot fetch QEMU 10"
eval "$(echo "$out" | grep -E '^QEMU10=')"
PINGS=2500
cfg=$(vm_two_vnics)
control=$VM_DIR/control.sock
vm_snapnet "$cfg"
vm_guest a "$VM_DIR/vnic0.sock" 52:54:00:5a:00:01 \
    "snapnet.ip=10.0.0.1/24 snapnet.peer=10.0.0.2 snapnet.tests=iperf-server,pingloop snapnet.loop_interval=0.01 snapnet.loop_count=$PINGS snapnet.loop_quiet=1 snapnet.wait_peer=60"
VM_QEMU=$QEMU10 vm_guest b "$VM_DIR/vnic1.sock" 52:54:00:5a:00:02 \
    "snapnet.ip=10.0.0.2/24 snapnet.peer=10.0.0.1 snapnet.tests=iperf-client,hold snapnet.iperf_time=20 snapnet.hold=40 snapnet.wait_peer=60"

for i in $(seq 900); do
    [ "$(vm_count a 'SNAPNET-LOG pingloop started')" -ge 1 ] && break
    sleep 0.1
done
[ "$(vm_count a 'SNAPNET-LOG pingloop started')" -ge 1 ] || vm_fail "guest a never started pinging"
sleep 2

blackouts=""
for n in 1 2 3; do
    # Refused ("not started") leaves the daemon serving as it was: try again,
    # as an operator would; anything else is a failure.
    for attempt in 1 2 3; do
        if reply=$("$VM_ROOT/target/release/snapnet" ctl --socket "$control" --json upgrade 2>&1); then
            break
        fi
        case "$reply" in
            *"not started"*) vm_log "upgrade $n refused, again: $reply"; sleep 1 ;;
            *) vm_fail "upgrade $n failed: $reply" ;;
        esac
        [ "$attempt" = 3 ] && vm_fail "upgrade $n refused three times: $reply"
    done
    pid=$(echo "$reply" | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
    [ -n "$pid" ] || vm_fail "upgrade $n: no pid in $reply"
    # The old process exits by itself; the new one is what cleanup stops.
    old=$VM_SNAPNET_PID
    VM_SNAPNET_PID=$pid
    for i in $(seq 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$old" 2>/dev/null && vm_fail "upgrade $n: the old process $old did not exit"
    blackouts="$blackouts$(echo "$reply" | sed -n 's/.*"blackout_ms": *\([0-9.]*\).*/\1/p' | cut -c1-5)ms,"
    vm_log "upgrade $n: $reply"
    sleep 2
done

vm_wait a 120
vm_wait b 120
vm_expect a pingloop
r=$(vm_result a pingloop)
sent=$(vm_field "$r" sent)
received=$(vm_field "$r" received)
[ "$sent" = "$PINGS" ] && [ "$received" = "$PINGS" ] || vm_fail "pings lost: $r"
vm_expect b iperf-client
for g in a b; do
    ready=$(grep -a "SNAPNET-READY" "$VM_DIR/$g.log" | tr -d '\r' | tail -1)
    done_=$(grep -a "SNAPNET-DONE" "$VM_DIR/$g.log" | tr -d '\r' | tail -1)
    c0=$(vm_field "$ready" carrier_changes)
    c1=$(vm_field "$done_" carrier_changes)
    [ -n "$c0" ] && [ "$c0" = "$c1" ] || vm_fail "$g: eth0's carrier changed: $c0 at boot, $c1 at the end"
    if grep -aiE "disconnect|reconnect|vhost.*(fail|error)" "$VM_DIR/$g.qemu.log" "$VM_DIR/$g.log" >&2; then
        vm_fail "$g: QEMU saw the backend go"
    fi
done
handed=$(grep -c "handed over; exiting" "$VM_DIR/snapnet.log" || true)
[ "$handed" = 3 ] || vm_fail "snapnet.log shows $handed hand-overs, not 3"
vm_pass "upgrades=3 blackouts=${blackouts%,} pings=$received/$sent rtt_max=$(vm_field "$r" rtt_max_ms)ms" \
    "iperf3=$(vm_field "$(vm_result b iperf-client)" gbps)Gbit/s qemu=7.2+$("$QEMU10" --version | head -1 | awk '{print $4}')"
