#!/usr/bin/env bash
# Soak: MINUTES of traffic across 8 vNICs while the control plane and guests
# churn around two steady pairs, printing the daemon's resources every minute.
#
#  - steady: s0 -> s1 and s2 -> s3, paced (`snapnet-bench load`, RATE frames/s
#    each, reflected back), for the whole run; every frame sent must return;
#  - guests that vanish: every few seconds a guest connects to c0/c1 or c2/c3,
#    sends at full speed and is killed (SIGKILL) mid-burst;
#  - control plane: every few seconds a vNIC hot<k> is added over RPC, a guest
#    sends into it and is killed, and the vNIC is removed again;
#  - rate limits: c0's and c2's egress limits change every few seconds.
#
# Each minute: open fds, threads, RSS (KiB) and the pool's free frames of the
# daemon. At the end one `result` line: the first and last minute's samples
# (both under churn; the first after a minute, so lazily built state is
# counted), the idle daemon before any guest connected and after all left
# (fds and threads must match; free frames differ by what the idle engines'
# caches hold), the pool's free frames once every vNIC is removed (all of
# them again), and frames lost on the steady pairs. No growth and lost=0 is
# a pass.
#
# Usage: scripts/bench-soak.sh [minutes]   (as root or not; no network used)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
RATE=${RATE:-10000}
# spreading: CPU follows the load, so the soak can share the machine.
POLICY=${POLICY:-spreading}
cargo build --release --bins >/dev/null 2>&1
SN=$PWD/target/release/snapnet
BENCH=$PWD/target/release/snapnet-bench
WORK=$(mktemp -d /tmp/snapnet-soak.XXXXXX)
cleanup() {
    pkill -9 -f "$BENCH .*$WORK" 2>/dev/null || true
    [ -n "${PID:-}" ] && kill -INT "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    pkill -9 -f "$SN serve --config $WORK" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

mac() { printf '52:54:00:5c:%02x:%02x' "$1" "$2"; }
{
    echo "{ \"runtime_dir\": \"$WORK\", \"vnics\": ["
    i=0
    for n in s0 s1 s2 s3 c0 c1 c2 c3; do
        [ $i -gt 0 ] && echo ","
        echo "{ \"name\": \"$n\", \"mac\": \"$(mac 0 $i)\" }"
        i=$((i + 1))
    done
    echo "], \"groups\": [ { \"name\": \"default\", \"policy\": \"$POLICY\" } ] }"
} > "$WORK/soak.json"

"$SN" serve --config "$WORK/soak.json" </dev/null >"$WORK/sn.log" 2>&1 &
PID=$!
for _ in $(seq 100); do grep -q running "$WORK/sn.log" 2>/dev/null && break; sleep 0.05; done
ctl() { "$SN" ctl --socket "$WORK/control.sock" "$@"; }

sample() {
    local fds threads rss free
    fds=$(ls "/proc/$PID/fd" | wc -l)
    threads=$(ls "/proc/$PID/task" | wc -l)
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
    free=$(ctl --json status | tr -d ' \n' | sed -n 's/.*"free_in_shared_list":\([0-9]*\).*/\1/p')
    echo "$fds $threads $rss $free"
}
# Before any guest connects: what an idle daemon with 8 vNICs holds.
idle_before=$(sample)
SECS=$((MINUTES * 60))
steady() { # tx rx out
    taskset -c 0 "$BENCH" load --tx "$WORK/$1.sock" --rx "$WORK/$2.sock" --rate "$RATE" --nap-us 50 \
        --drain-ms 1000 --seconds "$SECS" --size 128 >"$WORK/$3" 2>&1
}
steady s0 s1 steady1.out &
S1=$!
steady s2 s3 steady2.out &
S2=$!

# Control-plane and guest churn, until the steady pairs are done.
churn() {
    local i=0 k
    while kill -0 "$S1" 2>/dev/null; do
        k=$((i % 4))
        ctl call vnic.add "{\"name\":\"hot$k\",\"mac\":\"$(mac 1 "$k")\"}" >/dev/null 2>&1 || true
        timeout -s KILL 1 taskset -c 0 "$BENCH" tx --socket "$WORK/hot$k.sock" --seconds 5 \
            --size 1500 --dst-mac "$(mac 0 7)" >/dev/null 2>&1 || true
        a=c$((2 * (i % 2))) b=c$((2 * (i % 2) + 1))
        timeout -s KILL $((1 + RANDOM % 3)) taskset -c 0 "$BENCH" pair --tx "$WORK/$a.sock" \
            --rx "$WORK/$b.sock" --seconds 10 --size $((64 + RANDOM % 1400)) >/dev/null 2>&1 || true
        ctl call vnic.update "{\"name\":\"$a\",\"tx_limit\":{\"bytes_per_sec\":$((1000000 + RANDOM * 1000))}}" \
            >/dev/null 2>&1 || true
        ctl call vnic.remove "{\"name\":\"hot$k\"}" >/dev/null 2>&1 || true
        i=$((i + 1))
    done
    echo "$i" > "$WORK/churn.count"
}
# The shell reports every guest it SIGKILLs; those are intended.
churn 2>/dev/null &
CHURN=$!

printf "%-7s %-5s %-8s %-10s %-10s\n" minute fds threads rss_kib pool_free
first=""
for m in $(seq 1 "$MINUTES"); do
    sleep 60
    s=$(sample)
    [ -z "$first" ] && first=$s
    last=$s
    # shellcheck disable=SC2086
    printf "%-7s %-5s %-8s %-10s %-10s\n" "$m" $s
done
wait "$S1" "$S2" || true
wait "$CHURN" || true
# Let the last churn guest's frames settle before the final sample.
sleep 2
idle_after=$(sample)
# The idle engines' frame caches hold some frames (up to 257 each, by
# design); with every vNIC removed each frame must be back in the pool.
for n in s0 s1 s2 s3 c0 c1 c2 c3; do ctl call vnic.remove "{\"name\":\"$n\"}" >/dev/null; done
emptied=$(sample)
lost() { sed -n 's/.* lost=\([0-9]*\).*/\1/p' "$WORK/$1" | head -1; }
sent() { sed -n 's/.* sent=\([0-9]*\).*/\1/p' "$WORK/$1" | head -1; }
l1=$(lost steady1.out) l2=$(lost steady2.out)
if [ -z "$l1" ] || [ -z "$l2" ]; then
    echo "a steady pair did not finish:" >&2
    cat "$WORK/steady1.out" "$WORK/steady2.out" >&2
    exit 1
fi
read -r f0 t0 r0 p0 <<<"$first"
read -r f1 t1 r1 p1 <<<"$last"
read -r if0 it0 ir0 ip0 <<<"$idle_before"
read -r if1 it1 ir1 ip1 <<<"$idle_after"
read -r _ _ _ ipe <<<"$emptied"
echo "idle before: fds=$if0 threads=$it0 rss_kib=$ir0 pool_free=$ip0; after: fds=$if1 threads=$it1 rss_kib=$ir1 pool_free=$ip1;" \
    "every vNIC removed: pool_free=$ipe"
echo "steady pairs: $(sent steady1.out) and $(sent steady2.out) frames sent, lost $l1 and $l2;" \
    "churn rounds: $(cat "$WORK/churn.count" 2>/dev/null || echo ?)"
echo "result test=soak minutes=$MINUTES fds_first=$f0 fds_last=$f1 threads_first=$t0 threads_last=$t1" \
    "rss_kib_first=$r0 rss_kib_last=$r1 rss_growth_kib=$((r1 - r0)) pool_free_first=$p0 pool_free_last=$p1" \
    "idle_fds_before=$if0 idle_fds_after=$if1 idle_threads_before=$it0 idle_threads_after=$it1" \
    "idle_pool_free_before=$ip0 idle_pool_free_after=$ip1 pool_free_all_removed=$ipe steady_lost=$((l1 + l2)) churn_rounds=$(cat "$WORK/churn.count" 2>/dev/null || echo 0)"
