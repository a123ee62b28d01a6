#!/usr/bin/env bash
# Switching that scales with cores: two vNIC pairs (vnic0 -> vnic1 and
# vnic2 -> vnic3), each driven by its own snapnet-bench pair (our frontend),
# through snapnet run three ways, interleaved round by round:
#   1t      one backend thread, one switch shard (the default config);
#   2t      two backend threads, two switch shards, pair k on shard k;
#   2t1s    two backend threads, one switch shard (how it was before shards:
#           for reference, not a target).
# Every backend worker thread sits in a cgroup v1 CPU quota of its own (CAP %
# of a core per PERIOD_US), so each backend thread is a "core" of CAP % and
# the frontends, which get the rest of the machine, are not the bottleneck.
# The rate is both pairs' received frames per second together; medians over
# the rounds and the ratio 2t / 1t are printed (target >= 1.8). Each run
# also prints the CPU each backend worker got during the measurement
# (schedstat), to spot a thread that did not get its quota.
#
# Usage: scripts/bench-switch-scaling.sh [rounds] [seconds]   (as root)
#   env: SIZE=64  CAP=25  PERIOD_US=4000  MODES="1t 2t 2t1s"  QSIZE=1024  BCPU=1  FCPU=0
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SECS=${2:-3}
SIZE=${SIZE:-64}
CAP=${CAP:-25}
PERIOD_US=${PERIOD_US:-4000}
MODES=${MODES:-"1t 2t 2t1s"}
QSIZE=${QSIZE:-1024}
# Backend workers on BCPU (each capped, so two fit), both frontends on FCPU:
# a frontend then runs while the backend thread serving it runs.
BCPU=${BCPU:-1}
FCPU=${FCPU:-0}
[ -x target/release/snapnet ] && [ -x target/release/snapnet-bench ] ||
    cargo build --release --bin snapnet --bin snapnet-bench
SN=$PWD/target/release/snapnet
BENCH=$PWD/target/release/snapnet-bench
CGROOT=/sys/fs/cgroup/cpu
[ -w "$CGROOT" ] || { echo "needs a writable cgroup v1 cpu controller at $CGROOT" >&2; exit 1; }
WORK=$(mktemp -d /tmp/snapnet-scaling.XXXXXX)
CG=$CGROOT/snapnet-scaling-$$
mkdir -p "$CG"
SNPID=""
cleanup() {
    [ -n "$SNPID" ] && kill -INT "$SNPID" 2>/dev/null && wait "$SNPID" 2>/dev/null || true
    for t in "$CG"/t*; do
        [ -d "$t" ] || continue
        while read -r p; do echo "$p" > "$CGROOT/tasks" 2>/dev/null || true; done < "$t/tasks"
        rmdir "$t" 2>/dev/null || true
    done
    rmdir "$CG" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

for t in 0 1; do
    mkdir -p "$CG/t$t"
    echo "$PERIOD_US" > "$CG/t$t/cpu.cfs_period_us"
    echo $((PERIOD_US * CAP / 100)) > "$CG/t$t/cpu.cfs_quota_us"
done

# config <threads> <shards>: four vNICs; with two shards, pair k on shard k.
config() {
    local threads=$1 shards=$2 s0="" s1=""
    if [ "$shards" = 2 ]; then s0=',"shard":0'; s1=',"shard":1'; fi
    cat > "$WORK/sn.json" <<JSON
{"runtime_dir":"$WORK","switch_shards":$shards,
 "vnics":[{"name":"vnic0","mac":"52:54:00:5a:00:01"$s0},{"name":"vnic1","mac":"52:54:00:5a:00:02"$s0},
          {"name":"vnic2","mac":"52:54:00:5a:00:03"$s1},{"name":"vnic3","mac":"52:54:00:5a:00:04"$s1}],
 "groups":[{"name":"default","policy":"dedicated","threads":$threads,"cpus":[$BCPU]}]}
JSON
}

# The worker threads of group "default" (named default-<i>), one per line.
workers() {
    for t in /proc/"$SNPID"/task/*; do
        case "$(cat "$t/comm" 2>/dev/null)" in default-*) basename "$t" ;; esac
    done
}

run_time_ns() { awk '{print $1}' "/proc/$SNPID/task/$1/schedstat" 2>/dev/null || echo 0; }

# one_run <mode>: prints "<Mpps> <cpu% of each worker>".
one_run() {
    case $1 in
        1t) config 1 1 ;;
        2t) config 2 2 ;;
        2t1s) config 2 1 ;;
    esac
    rm -f "$WORK"/*.sock
    "$SN" serve --config "$WORK/sn.json" </dev/null >"$WORK/sn.log" 2>&1 &
    SNPID=$!
    for _ in $(seq 50); do [ -S "$WORK/vnic3.sock" ] && break; sleep 0.1; done
    local i=0 tids=()
    for tid in $(workers); do
        echo "$tid" > "$CG/t$i/tasks"
        tids+=("$tid")
        i=$((i + 1))
    done
    local before=() t0
    for tid in "${tids[@]}"; do before+=("$(run_time_ns "$tid")"); done
    t0=$(date +%s%N)
    taskset -c "$FCPU" "$BENCH" pair --tx "$WORK/vnic0.sock" --rx "$WORK/vnic1.sock" --size "$SIZE" --seconds "$SECS" \
        --queue-size "$QSIZE" >"$WORK/p0.out" 2>"$WORK/p0.err" &
    local b0=$!
    taskset -c "$FCPU" "$BENCH" pair --tx "$WORK/vnic2.sock" --rx "$WORK/vnic3.sock" --size "$SIZE" --seconds "$SECS" \
        --queue-size "$QSIZE" >"$WORK/p1.out" 2>"$WORK/p1.err" &
    local b1=$!
    wait "$b0" "$b1" || true
    local t1 cpus=""
    t1=$(date +%s%N)
    for k in "${!tids[@]}"; do
        local after
        after=$(run_time_ns "${tids[$k]}")
        cpus="$cpus $(awk -v a="${before[$k]}" -v b="$after" -v t="$((t1 - t0))" 'BEGIN {printf "%.0f%%", (b - a) * 100 / t}')"
    done
    kill -INT "$SNPID" 2>/dev/null || true
    wait "$SNPID" 2>/dev/null || true
    SNPID=""
    [ -n "${DEBUG:-}" ] && grep -h '^result' "$WORK/p0.out" "$WORK/p1.out" >&2
    local r0 r1
    r0=$(sed -n 's/^result.* rx_mpps=\([0-9.]*\).*/\1/p' "$WORK/p0.out")
    r1=$(sed -n 's/^result.* rx_mpps=\([0-9.]*\).*/\1/p' "$WORK/p1.out")
    awk -v a="${r0:-0}" -v b="${r1:-0}" -v c="$cpus" 'BEGIN {printf "%.3f %.3f %.3f%s\n", a + b, a, b, c}'
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else if (NR) print (a[NR/2]+a[NR/2+1])/2; else print 0}'; }

echo "two vNIC pairs, ${SIZE} B frames, each backend thread capped at ${CAP}% (period ${PERIOD_US} us), ${ROUNDS} interleaved rounds of ${SECS} s"
declare -A all=()
for r in $(seq "$ROUNDS"); do
    for m in $MODES; do
        read -r total p0 p1 cpus < <(one_run "$m")
        all[$m]="${all[$m]:-} $total"
        printf "round %d %-5s %7s Mpps (pair0 %s, pair1 %s; worker CPU:%s)\n" "$r" "$m" "$total" "$p0" "$p1" "$cpus"
    done
done
declare -A med=()
for m in $MODES; do
    med[$m]=$(echo "${all[$m]}" | median)
    printf "median %-5s %s Mpps\n" "$m" "${med[$m]}"
done
if [ -n "${med[1t]:-}" ] && [ -n "${med[2t]:-}" ]; then
    awk -v a="${med[1t]}" -v b="${med[2t]}" -v c="${med[2t1s]:-0}" -v s="$SIZE" -v cap="$CAP" 'BEGIN {
        printf "result size=%d cap_pct=%d one_thread_mpps=%.3f two_threads_mpps=%.3f ratio=%.2f (target >= 1.8) two_threads_one_shard_mpps=%.3f ratio_one_shard=%.2f\n",
            s, cap, a, b, (a > 0 ? b / a : 0), c, (a > 0 ? c / a : 0) }'
fi
