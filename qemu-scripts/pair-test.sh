#!/usr/bin/env bash
# Runs snapnet with two test guests switched to each other and checks their
# SNAPNET-RESULT lines: the end-to-end test of the vhost-user data path.
#
# Usage: qemu-scripts/pair-test.sh [options]
#   --qemu BIN            QEMU binary or wrapper (e.g. the QEMU10 of fetch-qemu10.sh)
#   --snapnet BIN         snapnet binary (default: target/release/snapnet, built if missing)
#   --no-snapnet          use an already running snapnet (sockets must exist)
#   --config FILE         run `snapnet serve --config FILE` (sockets: --socket0/1)
#   --role0 R --role1 R   socket role per vNIC: server (snapnet listens, default)
#                         or client (QEMU listens, snapnet connects); any client
#                         role, --queues > 1 or --mtu makes the script write a
#                         config for snapnet (sockets in the run directory)
#   --socket0 P --socket1 P  vNIC sockets (default /run/snapnet/vnic{0,1}.sock)
#   --queues N            queue pairs of both vNICs and guests (default 1)
#   --mtu N               vNIC MTU in the generated config (guests keep 1500 unless
#                         --cmdline0/1 set snapnet.mtu)
#   --tests0 T --tests1 T guest test lists (default: features,ping,iperf-server,hold
#                         and features,ping,iperf-client)
#   --cmdline0 S --cmdline1 S  extra kernel arguments for guest 0 / 1
#   --timeout S           per-guest QEMU timeout (default 180)
#   --logs DIR            keep serial logs and snapnet output in DIR
#
# Output: the guests' SNAPNET-RESULT lines prefixed by guest name, snapnet's
# counters (SIGUSR1 before stopping it with SIGINT), then
#   PAIR-TEST status=pass|fail wall_s=<seconds> qemu=<version>
# Exit status 0 when every test passed and both guests printed SNAPNET-DONE.
# Every process started here is stopped and the run directory removed on exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${SNAPNET_GUEST_CACHE:-/var/cache/snapnet-guest}
qemu=qemu-system-x86_64 snapnet="$repo/target/release/snapnet" run_snapnet=1 config=""
role0=server role1=server socket0="" socket1="" queues=1 mtu=""
tests0=features,ping,iperf-server,hold tests1=features,ping,iperf-client
cmdline0="" cmdline1="" tmo=180 logs=""

die() { echo "pair-test.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --qemu) need "$@"; qemu=$2; shift ;;
        --snapnet) need "$@"; snapnet=$2; shift ;;
        --no-snapnet) run_snapnet=0 ;;
        --config) need "$@"; config=$2; shift ;;
        --role0) need "$@"; role0=$2; shift ;;
        --role1) need "$@"; role1=$2; shift ;;
        --socket0) need "$@"; socket0=$2; shift ;;
        --socket1) need "$@"; socket1=$2; shift ;;
        --queues) need "$@"; queues=$2; shift ;;
        --mtu) need "$@"; mtu=$2; shift ;;
        --tests0) need "$@"; tests0=$2; shift ;;
        --tests1) need "$@"; tests1=$2; shift ;;
        --cmdline0) need "$@"; cmdline0=$2; shift ;;
        --cmdline1) need "$@"; cmdline1=$2; shift ;;
        --timeout) need "$@"; tmo=$2; shift ;;
        --logs) need "$@"; logs=$2; shift ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

eval "$("$here/build-guest.sh" --quiet)"
export GUEST_KERNEL GUEST_INITRD
mkdir -p "$cache"
run=$(mktemp -d "$cache/run.XXXXXX")
snap_pid="" g_pids=()

cleanup() {
    local p f
    for p in "${g_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$run"/g*.pid; do
        if [ -s "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
    done
    if [ -n "$snap_pid" ] && kill -0 "$snap_pid" 2>/dev/null; then
        kill -INT "$snap_pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$snap_pid" 2>/dev/null || true
    fi
    if [ -n "$logs" ]; then
        mkdir -p "$logs"
        cp "$run"/*.log "$run"/*.json "$logs"/ 2>/dev/null || true
    fi
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A generated config when the embedded default does not fit.
if [ -z "$config" ] && { [ "$role0" != server ] || [ "$role1" != server ] || [ "$queues" != 1 ] || [ -n "$mtu" ] \
    || [ -n "$socket0" ] || [ -n "$socket1" ]; }; then
    socket0=${socket0:-$run/vnic0.sock}
    socket1=${socket1:-$run/vnic1.sock}
    config="$run/snapnet.json"
    extra=""
    [ -n "$mtu" ] && extra=", \"mtu\": $mtu"
    cat >"$config" <<EOF
{
  "runtime_dir": "$run",
  "socket_dirs": [ "$(dirname "$socket0")", "$(dirname "$socket1")" ],
  "vnics": [
    { "name": "vnic0", "mac": "52:54:00:5a:00:01", "socket": "$socket0", "role": "$role0", "queue_pairs": $queues$extra },
    { "name": "vnic1", "mac": "52:54:00:5a:00:02", "socket": "$socket1", "role": "$role1", "queue_pairs": $queues$extra }
  ],
  "groups": [ { "name": "default", "policy": "dedicated", "threads": 1 } ]
}
EOF
fi
socket0=${socket0:-/run/snapnet/vnic0.sock}
socket1=${socket1:-/run/snapnet/vnic1.sock}
qver=$("$qemu" --version | sed -n 's/^QEMU emulator version \([^ ]*\).*/\1/p')

start=$(date +%s.%N)
if [ "$run_snapnet" = 1 ]; then
    if [ ! -x "$snapnet" ]; then
        (cd "$repo" && cargo build --release --bin snapnet >&2)
    fi
    args=(serve)
    [ -n "$config" ] && args+=(--config "$config")
    "$snapnet" "${args[@]}" >"$run/snapnet.log" 2>&1 &
    snap_pid=$!
    # Wait for the server sockets (client-role sockets appear when QEMU listens).
    for i in $(seq 50); do
        ok=1
        [ "$role0" = server ] && [ ! -S "$socket0" ] && ok=0
        [ "$role1" = server ] && [ ! -S "$socket1" ] && ok=0
        [ "$ok" = 1 ] && break
        kill -0 "$snap_pid" 2>/dev/null || { cat "$run/snapnet.log" >&2; die "snapnet exited"; }
        sleep 0.1
    done
    [ "$i" -lt 50 ] || die "snapnet sockets did not appear"
fi

launch() {
    local n=$1 sock=$2 role=$3 mac=$4 ip=$5 peer=$6 tests=$7 extra=$8
    "$here/launch-guest.sh" --qemu "$qemu" --socket "$sock" --socket-role "$role" --mac "$mac" \
        --queues "$queues" --serial-log "$run/g$n.log" --pidfile "$run/g$n.pid" --timeout "$tmo" \
        --name "snapnet-g$n" \
        --cmdline "snapnet.ip=$ip/24 snapnet.peer=$peer snapnet.tests=$tests snapnet.hold_until=iperf $extra" \
        2>"$run/g$n.err" &
    g_pids+=($!)
}
launch 0 "$socket0" "$role0" 52:54:00:5a:00:01 10.0.0.1 10.0.0.2 "$tests0" "$cmdline0"
launch 1 "$socket1" "$role1" 52:54:00:5a:00:02 10.0.0.2 10.0.0.1 "$tests1" "$cmdline1"

rcs=()
for p in "${g_pids[@]}"; do
    rc=0
    wait "$p" || rc=$?
    rcs+=("$rc")
done
g_pids=()
end=$(date +%s.%N)

status=pass
for n in 0 1; do
    cat "$run/g$n.err" >&2
    grep -a '^SNAPNET-\(RESULT\|READY\|LOG\|DONE\)' "$run/g$n.log" | tr -d '\r' | sed "s/^/g$n: /" || true
    grep -aq '^SNAPNET-DONE' "$run/g$n.log" || { echo "g$n: no SNAPNET-DONE (QEMU rc ${rcs[$n]})"; status=fail; }
    grep -aq '^SNAPNET-RESULT .*status=fail' "$run/g$n.log" && status=fail
    [ "${rcs[$n]}" = 0 ] || { echo "g$n: QEMU exit status ${rcs[$n]}"; status=fail; }
done

if [ -n "$snap_pid" ]; then
    kill -USR1 "$snap_pid" 2>/dev/null || true
    sleep 0.5
    kill -INT "$snap_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$snap_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$snap_pid" 2>/dev/null; then
        echo "snapnet did not exit 5 s after SIGINT" >&2
        status=fail
    else
        wait "$snap_pid" || { echo "snapnet exit status $?" >&2; status=fail; }
    fi
    snap_pid=""
    sed 's/^/snapnet: /' "$run/snapnet.log" | grep -v ' DEBUG ' | tail -n 40
fi
echo "PAIR-TEST status=$status wall_s=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}') qemu=$qver"
[ "$status" = pass ]
