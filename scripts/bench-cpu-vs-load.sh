#!/usr/bin/env bash
# CPU used against offered load, per engine-group policy, with DPDK testpmd as
# the reference: snapnet-bench `load` sends paced, timestamped 64 B frames
# vnic0 -> vnic1 and reflects them back (RTT), at 0, 1, 10, 50 and 100 % of
# the highest rate the tool reaches; the backend's CPU (all its threads, from
# /proc/PID/stat) is measured over the same window. Prints a table and writes
# it as CSV to the path given (default docs/cpu-vs-load.csv), plotted next to
# it as PNG (snapnet-bench plot).
#
# Usage: scripts/bench-cpu-vs-load.sh [csv] (as root; SECS=3 per point,
# QUEUE_SIZE=1024 ring entries, BACKENDS to pick rows)
set -euo pipefail
cd "$(dirname "$0")/.."
CSV=${1:-docs/cpu-vs-load.csv}
SECS=${SECS:-3}
# Virtqueue entries of the tool's devices (QEMU allows up to 1024 with
# vhost-user). A napping backend can batch no more than its rings hold.
QUEUE_SIZE=${QUEUE_SIZE:-1024}
bash scripts/install-prereqs.sh protobuf-compiler dpdk-dev build-essential pkg-config fonts-dejavu-core
cargo build --release --bin snapnet --bin snapnet-bench >/dev/null 2>&1 || cargo build --release --bin snapnet --bin snapnet-bench
SN=$PWD/target/release/snapnet
BENCH=$PWD/target/release/snapnet-bench
WORK=$(mktemp -d /tmp/snapnet-cpuload.XXXXXX)
PID=""
cleanup() {
    [ -n "$PID" ] && kill -INT "$PID" 2>/dev/null && sleep 0.5
    [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
HZ=$(getconf CLK_TCK)

config() { # policy extra-group-json
    cat > "$WORK/sn.json" <<JSON
{"runtime_dir":"$WORK","vnics":[{"name":"vnic0","mac":"52:54:00:5a:00:01"},{"name":"vnic1","mac":"52:54:00:5a:00:02"}],
 "groups":[{"name":"g","policy":"$1" $2}]}
JSON
}

start_backend() { # name
    rm -f "$WORK"/*.sock
    case $1 in
        dedicated) config dedicated ', "threads": 1, "cpus": [1]' ;;
        spreading) config spreading ', "cpus": [1]' ;;
        compacting) config compacting ', "threads": 1, "cpus": [1]' ;;
        # The same with a looser latency bound: longer naps, fewer wake-ups.
        compacting-500us) config compacting ', "threads": 1, "cpus": [1], "latency_bound_us": 500' ;;
    esac
    if [ "$1" = testpmd ]; then
        dpdk-testpmd --no-pci --no-huge -m 256 --no-shconf --file-prefix "cpl$$" --lcores '0@1,1@1' \
            --vdev "net_vhost0,iface=$WORK/vnic0.sock" --vdev "net_vhost1,iface=$WORK/vnic1.sock" -- \
            --forward-mode=io --auto-start --total-num-mbufs=16384 --stats-period 3600 </dev/null >"$WORK/tp.log" 2>&1 &
        PID=$!
        for _ in $(seq 100); do grep -q "Checking link statuses" "$WORK/tp.log" 2>/dev/null && break; sleep 0.1; done
    else
        "$SN" serve --config "$WORK/sn.json" </dev/null >"$WORK/sn.log" 2>&1 &
        PID=$!
        for _ in $(seq 100); do [ -S "$WORK/vnic1.sock" ] && break; sleep 0.1; done
    fi
}

stop_backend() { kill -INT "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }

# One measured point: prints "cores rate p50 p99".
point() { # rate (empty = max)
    local args=() out c0 c1 t0 t1
    [ -n "$1" ] && args=(--rate "$1")
    c0=$(cpu_ticks); t0=$(date +%s.%N)
    out=""
    for _ in $(seq 10); do
        out=$(taskset -c 0 "$BENCH" load --tx "$WORK/vnic0.sock" --rx "$WORK/vnic1.sock" --seconds "$SECS" \
            --dst-mac 52:54:00:5a:00:02 --queue-size "$QUEUE_SIZE" "${args[@]}" 2>/dev/null | grep '^result' || true)
        [ -n "$out" ] && break
        sleep 0.5
    done
    c1=$(cpu_ticks); t1=$(date +%s.%N)
    local f
    f() { echo "$out" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    awk -v c="$((c1 - c0))" -v hz="$HZ" -v s="$t0" -v e="$t1" -v r="$(f rate_pps)" -v p50="$(f rtt_p50_us)" -v p99="$(f rtt_p99_us)" \
        'BEGIN { printf "%.3f %.0f %s %s\n", c / hz / (e - s), r, p50, p99 }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# The unpaced rate can exceed what the tool sustains when pacing itself, so
# the highest rate is what a paced run at the unpaced rate achieves; the
# median of three, as the VM's vCPU placement can move it for a while.
start_backend dedicated
max=$(for _ in 1 2 3; do
    read -r _ unpaced _ _ < <(point "")
    read -r _ paced _ _ < <(point "$unpaced")
    echo "$paced"
done | median)
stop_backend
echo "highest rate the tool reaches (dedicated): $max frames/s"
# Each point is measured ROUNDS times, a whole pass over the backends per
# round, and the table holds each figure's median: this VM's two vCPUs land
# on differently placed host CPUs from time to time, which moves the RTT
# (about 1 against 3.7 µs) and the tool's highest rate for a while.
ROUNDS=${ROUNDS:-3}
BACKEND_LIST=${BACKENDS:-dedicated spreading compacting compacting-500us testpmd}
RAW="$WORK/raw.csv"
: > "$RAW"
printf "%-5s %-16s %5s %10s %10s %6s %9s %9s\n" round backend load% offered achieved cores p50_us p99_us
for round in $(seq "$ROUNDS"); do
    for b in $BACKEND_LIST; do
        start_backend "$b"
        for pct in 0 1 10 50 100; do
            rate=$(awk -v m="$max" -v p="$pct" 'BEGIN { printf "%.0f", m * p / 100 }')
            read -r cores got p50 p99 < <(point "$rate")
            printf "%-5s %-16s %5s %10s %10s %6s %9s %9s\n" "$round" "$b" "$pct" "$rate" "$got" "$cores" "$p50" "$p99"
            echo "$b,$pct,$rate,$got,$cores,$p50,$p99" >> "$RAW"
        done
        stop_backend
    done
done

# Medians per backend and load, in the order measured.
mkdir -p "$(dirname "$CSV")"
echo "backend,load_pct,offered_pps,achieved_pps,cores,rtt_p50_us,rtt_p99_us" > "$CSV"
echo "median of $ROUNDS rounds:"
printf "%-16s %5s %10s %10s %6s %9s %9s\n" backend load% offered achieved cores p50_us p99_us
for b in $BACKEND_LIST; do
    for pct in 0 1 10 50 100; do
        rows=$(grep "^$b,$pct," "$RAW")
        col() { echo "$rows" | cut -d, -f"$1" | median; }
        line="$b,$pct,$(col 3),$(col 4),$(col 5),$(col 6),$(col 7)"
        echo "$line" >> "$CSV"
        echo "$line" | awk -F, '{ printf "%-16s %5s %10.0f %10.0f %6.3f %9.1f %9.1f\n", $1, $2, $3, $4, $5, $6, $7 }'
    done
done
# The issue's ratios: compacting's cores at 10 % against the ideal (its
# 100 %-load cost per packet times the packets sent), and dedicated's RTT
# median against testpmd's.
awk -F, '
    { cores[$1 "," $2] = $5; got[$1 "," $2] = $4; p50[$1 "," $2] = $6; seen[$1] = 1 }
    END {
        for (b in seen) if (b ~ /^compacting/ && got[b ",100"] > 0) {
            ideal = cores[b ",100"] / got[b ",100"] * got[b ",10"]
            printf "%s at 10 %%: %.3f cores, ideal %.3f, ratio %.2f (target <= 2)\n", b, cores[b ",10"], ideal, cores[b ",10"] / ideal
        }
        for (l = 1; l <= 10; l += 9) if (p50["testpmd," l] > 0)
            printf "dedicated/testpmd RTT median at %d %%: %.1f / %.1f us, ratio %.2f (target <= 1)\n", l, p50["dedicated," l], p50["testpmd," l], p50["dedicated," l] / p50["testpmd," l]
    }' "$CSV"
PNG="${CSV%.csv}.png"
"$BENCH" plot --csv "$CSV" --out "$PNG" >/dev/null
echo "wrote $CSV and $PNG"
