#!/usr/bin/env bash
# Shared by the vm-tests scenarios: a private snapnet, guests booted through
# qemu-scripts/, result parsing, and cleanup of everything on any exit.
# A scenario sources this, calls vm_setup, does its work, and ends with
# vm_pass or vm_fail (exactly one PASS/FAIL line).

set -euo pipefail
VM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VM_SCENARIO=${VM_SCENARIO:-$(basename "$0" .sh)}
VM_START=$(date +%s.%N)
VM_PIDS=()
VM_SNAPNET_PID=""

vm_log() { echo "[$VM_SCENARIO] $*" >&2; }

vm_elapsed() { awk -v s="$VM_START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

vm_pass() { echo "PASS $VM_SCENARIO ($(vm_elapsed) s) $*"; exit 0; }

vm_fail() {
    echo "FAIL $VM_SCENARIO ($(vm_elapsed) s) $*"
    if [ -n "${VM_DIR:-}" ]; then
        for f in "$VM_DIR"/*.log; do
            [ -f "$f" ] || continue
            echo "--- $f (last 15 lines)" >&2
            tail -15 "$f" >&2
        done
    fi
    exit 1
}

vm_cleanup() {
    local p i
    # The verdict is out; bash's notes about the jobs killed here are noise.
    exec 2>/dev/null
    for p in "${VM_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    if [ -n "$VM_SNAPNET_PID" ]; then
        # Stop it as a user would; insist if it does not go.
        kill -INT "$VM_SNAPNET_PID" 2>/dev/null || true
        for i in $(seq 30); do kill -0 "$VM_SNAPNET_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$VM_SNAPNET_PID" 2>/dev/null || true
    fi
    # A scenario's own processes and namespaces go before the wait below.
    if declare -F vm_cleanup_hook >/dev/null; then vm_cleanup_hook || true; fi
    wait 2>/dev/null || true
    # QEMU runs under `timeout` inside launch-guest.sh: kill by our private dir.
    if [ -n "${VM_DIR:-}" ]; then
        pkill -9 -f "$VM_DIR" 2>/dev/null || true
        sleep 0.2
        [ -n "${VM_KEEP:-}" ] || rm -rf "$VM_DIR"
    fi
}

# Creates the private directory, builds snapnet and the guest (cached).
vm_setup() {
    VM_DIR=$(mktemp -d "/tmp/snapnet-vm-$VM_SCENARIO.XXXXXX")
    trap vm_cleanup EXIT
    trap 'vm_fail "interrupted"' INT TERM
    (cd "$VM_ROOT" && cargo build --release --bin snapnet >/dev/null 2>&1) || vm_fail "cannot build snapnet"
    local out
    out=$(bash "$VM_ROOT/qemu-scripts/build-guest.sh") || vm_fail "cannot build the test guest"
    eval "$(echo "$out" | grep -E '^GUEST_(KERNEL|INITRD)=')"
    [ -f "${GUEST_KERNEL:-}" ] && [ -f "${GUEST_INITRD:-}" ] || vm_fail "guest build printed no kernel/initrd"
    VM_QEMU=${VM_QEMU:-qemu-system-x86_64}
    command -v "$VM_QEMU" >/dev/null || [ -x "$VM_QEMU" ] || vm_fail "QEMU not found: $VM_QEMU"
}

# vm_config NAME JSON-VNICS-ARRAY [MTU]: writes $VM_DIR/NAME.json
vm_config() {
    cat > "$VM_DIR/$1.json" <<JSON
{ "runtime_dir": "$VM_DIR", "vnics": $2,
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1 } ] }
JSON
    echo "$VM_DIR/$1.json"
}

# Two vNICs vnic0/vnic1 in $VM_DIR; extra JSON fields for both as $1.
vm_two_vnics() {
    local extra=${1:-}
    vm_config two "[
      { \"name\": \"vnic0\", \"mac\": \"52:54:00:5a:00:01\" $extra },
      { \"name\": \"vnic1\", \"mac\": \"52:54:00:5a:00:02\" $extra } ]"
}

# vm_snapnet CONFIG: starts snapnet, waits for its sockets. With VM_NETNS set
# it runs in that network namespace (`ip netns exec` execs it: same PID).
vm_snapnet() {
    local i before
    # A restart appends to the same log: wait for this process's line.
    before=$(grep -c " running; control socket" "$VM_DIR/snapnet.log" 2>/dev/null || true)
    ${VM_NETNS:+ip netns exec "$VM_NETNS"} "$VM_ROOT/target/release/snapnet" serve --config "$1" >>"$VM_DIR/snapnet.log" 2>&1 &
    VM_SNAPNET_PID=$!
    for i in $(seq 100); do
        [ "$(grep -c " running; control socket" "$VM_DIR/snapnet.log" 2>/dev/null || true)" -gt "${before:-0}" ] && return 0
        kill -0 "$VM_SNAPNET_PID" 2>/dev/null || vm_fail "snapnet exited at start"
        sleep 0.05
    done
    vm_fail "snapnet did not start"
}

vm_snapnet_kill9() {
    kill -9 "$VM_SNAPNET_PID" 2>/dev/null || true
    { wait "$VM_SNAPNET_PID"; } 2>/dev/null || true
    VM_SNAPNET_PID=""
}

# Prints snapnet's counter table (SIGUSR1) and returns it on stdout.
vm_counters() {
    local before
    before=$(wc -l < "$VM_DIR/snapnet.log")
    kill -USR1 "$VM_SNAPNET_PID"
    sleep 0.3
    tail -n +"$((before + 1))" "$VM_DIR/snapnet.log" | grep -vE '^\[' || true
}

# vm_guest NAME SOCKET MAC "CMDLINE" [extra launch-guest.sh options...]
# Boots a guest in the background; serial output goes to $VM_DIR/NAME.log.
vm_guest() {
    local name=$1 sock=$2 mac=$3 cmdline=$4
    shift 4
    # In a subshell that outlives QEMU, so killing QEMU on purpose is not
    # reported as a killed job (and its own notice of it goes nowhere).
    (bash "$VM_ROOT/qemu-scripts/launch-guest.sh" --socket "$sock" --mac "$mac" --qemu "$VM_QEMU" \
        --kernel "$GUEST_KERNEL" --initrd "$GUEST_INITRD" \
        --cmdline "$cmdline" --serial-log "$VM_DIR/$name.log" --timeout "${VM_GUEST_TIMEOUT:-120}" \
        --pidfile "$VM_DIR/$name.pid" "$@" >"$VM_DIR/$name.qemu.log" 2>&1 || true) 2>/dev/null &
    VM_PIDS+=($!)
    eval "VM_GUEST_PID_$name=$!"
}

# vm_guest_kill NAME: kills the guest's QEMU (SIGKILL, like a crash) and reaps it.
vm_guest_kill() {
    local job
    kill -9 "$(cat "$VM_DIR/$1.pid" 2>/dev/null)" 2>/dev/null || true
    job=$(eval "echo \${VM_GUEST_PID_$1:-}")
    if [ -n "$job" ]; then { wait "$job"; } 2>/dev/null || true; fi
}

# vm_wait NAME [TIMEOUT]: waits until the guest printed SNAPNET-DONE.
vm_wait() {
    local name=$1 t=${2:-120} i
    for i in $(seq $((t * 10))); do
        grep -q "SNAPNET-DONE" "$VM_DIR/$name.log" 2>/dev/null && return 0
        sleep 0.1
    done
    vm_fail "guest $name did not finish within ${t}s"
}

# vm_result NAME TEST: the guest's result line for TEST (empty if none).
vm_result() { { grep -a "SNAPNET-RESULT test=$2 " "$VM_DIR/$1.log" || true; } | tail -1 | tr -d '\r'; }

# vm_expect NAME TEST: fails the scenario unless TEST passed in guest NAME.
vm_expect() {
    local r
    r=$(vm_result "$1" "$2")
    case "$r" in
        *status=pass*) vm_log "$1: $r" ;;
        *) vm_fail "$1: $2 did not pass: ${r:-no result}" ;;
    esac
}

# vm_count NAME PATTERN: lines of guest NAME's console matching PATTERN.
vm_count() {
    local n
    n=$(grep -ac "$2" "$VM_DIR/$1.log" 2>/dev/null) || true
    echo "${n:-0}"
}

# vm_field LINE KEY: the value of key=value in a result line.
vm_field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }

# vm_qmp SOCKET COMMAND-JSON...: runs the commands on a QEMU's QMP socket
# after the handshake and prints QEMU's replies, one JSON object per line
# (it waits VM_QMP_WAIT seconds, default 0.3, for them).
vm_qmp() {
    local sock=$1
    shift
    { echo '{"execute":"qmp_capabilities"}'; printf '%s\n' "$@"; sleep "${VM_QMP_WAIT:-0.3}"; } |
        timeout 10 socat - "UNIX-CONNECT:$sock"
}

# vm_migration_status SOCKET: the source QEMU's migration status
# (active, completed, failed, cancelled, ...) and, once completed, the
# downtime: "STATUS [DOWNTIME_MS]".
vm_migration_status() {
    local reply
    reply=$(vm_qmp "$1" '{"execute":"query-migrate"}' | grep '"status"' | tail -1) || true
    echo "$(echo "$reply" | sed -n 's/.*"status": *"\([a-z-]*\)".*/\1/p' | tail -1) $(echo "$reply" | sed -n 's/.*"downtime": *\([0-9]*\).*/\1/p')"
}

# vm_two_hosts PREFIX SUBNET: two snapnet "hosts", network namespaces
# ${PREFIX}a and ${PREFIX}b, whose interface `fabric` (SUBNET.1 and SUBNET.2)
# is a veth into a third namespace ${PREFIX}f holding a bridge. Sets VM_HOST_A,
# VM_HOST_B, VM_FABRIC_NS and the fabric MACs VM_UNDERLAY_A/B; the namespaces
# and a second snapnet whose PID is in VM_SNAPNET_B go at cleanup.
VM_SNAPNET_B=""
vm_two_hosts() {
    local p=$1 net=$2 h ns
    VM_HOST_A=${p}a VM_HOST_B=${p}b VM_FABRIC_NS=${p}f
    vm_cleanup_hook() {
        [ -n "$VM_SNAPNET_B" ] && kill -9 "$VM_SNAPNET_B" 2>/dev/null
        ip netns del "$VM_HOST_A" 2>/dev/null
        ip netns del "$VM_HOST_B" 2>/dev/null
        ip netns del "$VM_FABRIC_NS" 2>/dev/null
    }
    ip netns add "$VM_HOST_A" && ip netns add "$VM_HOST_B" && ip netns add "$VM_FABRIC_NS" ||
        vm_fail "cannot create namespaces"
    ip -n "$VM_FABRIC_NS" link add br0 type bridge && ip -n "$VM_FABRIC_NS" link set br0 up
    for h in a b; do
        ns=$VM_HOST_A; [ "$h" = b ] && ns=$VM_HOST_B
        ip link add "${p}u$h" netns "$ns" type veth peer name "${p}f$h" netns "$VM_FABRIC_NS" || vm_fail "no veth"
        ip -n "$VM_FABRIC_NS" link set "${p}f$h" master br0 && ip -n "$VM_FABRIC_NS" link set "${p}f$h" up
        ip -n "$ns" link set "${p}u$h" name fabric && ip -n "$ns" link set fabric up && ip -n "$ns" link set lo up
    done
    ip -n "$VM_HOST_A" addr add "$net.1/24" dev fabric
    ip -n "$VM_HOST_B" addr add "$net.2/24" dev fabric
    VM_UNDERLAY_A=$(ip netns exec "$VM_HOST_A" cat /sys/class/net/fabric/address)
    VM_UNDERLAY_B=$(ip netns exec "$VM_HOST_B" cat /sys/class/net/fabric/address)
}

# vm_migration_rounds FUNC: runs `FUNC LABEL QEMU` once per QEMU version
# chosen by SNAPNET_MIGRATION_QEMU (72, 10 or both, the default), label
# qemu72 or qemu10; each round sets RESULT. VM_RESULTS gets them all,
# separated by ';'.
vm_migration_rounds() {
    local want=${SNAPNET_MIGRATION_QEMU:-both} results=() out
    if [ "$want" = 72 ] || [ "$want" = both ]; then
        "$1" qemu72 qemu-system-x86_64
        vm_log "$RESULT"
        results+=("$RESULT")
    fi
    if [ "$want" = 10 ] || [ "$want" = both ]; then
        out=$(bash "$VM_ROOT/qemu-scripts/fetch-qemu10.sh") || vm_fail "cannot fetch QEMU 10"
        eval "$(echo "$out" | grep -E '^QEMU10=')"
        "$1" qemu10 "$QEMU10"
        vm_log "$RESULT"
        results+=("$RESULT")
    fi
    [ "${#results[@]}" -gt 0 ] || vm_fail "SNAPNET_MIGRATION_QEMU must be 72, 10 or both, not '$want'"
    VM_RESULTS=$(IFS=';'; echo "${results[*]}")
}

# vm_migrated_file SENDER DEST: once SENDER (sendfile) ended and DEST, the
# migrated guest, reported recvfile, fails unless DEST received the file
# SENDER sent (sha256). Sets VM_FILE_SUM.
vm_migrated_file() {
    local sender=$1 dest=$2 i sent recv
    vm_wait "$sender" 180
    for i in $(seq 600); do
        [ -n "$(vm_result "$dest" recvfile)" ] && break
        sleep 0.1
    done
    vm_expect "$dest" recvfile
    sent=$(vm_result "$sender" sendfile)
    recv=$(vm_result "$dest" recvfile)
    VM_FILE_SUM=$(vm_field "$recv" sha256)
    [ -n "$(vm_field "$sent" sha256)" ] && [ "$VM_FILE_SUM" = "$(vm_field "$sent" sha256)" ] ||
        vm_fail "$dest: the file changed on its way: sent $(vm_field "$sent" sha256) ($(vm_field "$sent" bytes) B), received $VM_FILE_SUM ($(vm_field "$recv" bytes) B)"
}

# vm_pingloop_figures GUEST: its pingloop's sent, received and longest run
# lost as VM_PINGS_SENT, VM_PINGS_RECEIVED, VM_PINGS_GAP; fails if none came
# back.
vm_pingloop_figures() {
    local r
    r=$(vm_result "$1" pingloop)
    VM_PINGS_SENT=$(vm_field "$r" sent)
    VM_PINGS_RECEIVED=$(vm_field "$r" received)
    VM_PINGS_GAP=$(vm_field "$r" max_seq_gap)
    [ -n "$VM_PINGS_RECEIVED" ] && [ "$VM_PINGS_RECEIVED" -gt 0 ] || vm_fail "$1: no ping answered: $r"
}

# vm_migrate QMP SOCKET: once the destination QEMU listens on SOCKET, tells
# the source (QMP socket QMP) to migrate there and waits until it ended,
# polling quickly (the control plane's reaction after the end counts in the
# guest's gap). Fails unless it completed; sets VM_DOWNTIME (ms).
vm_migrate() {
    local qmp=$1 sock=$2 i reply status=""
    for i in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || vm_fail "the destination QEMU is not listening on $sock"
    reply=$(vm_qmp "$qmp" '{"execute":"migrate","arguments":{"uri":"unix:'"$sock"'"}}')
    echo "$reply" | grep -q '"error"' && vm_fail "migrate refused: $reply"
    for i in $(seq 1200); do
        read -r status VM_DOWNTIME <<<"$(VM_QMP_WAIT=0.05 vm_migration_status "$qmp")"
        case "$status" in completed|failed|cancelled) break ;; esac
    done
    [ "$status" = completed ] || vm_fail "the migration ended as '$status'"
}
