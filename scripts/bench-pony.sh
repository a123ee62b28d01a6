#!/usr/bin/env bash
# Pony Express against kernel TCP on one veth pair between two network
# namespaces made for the run (docs/pony.md, "Figures"); interleaved rounds,
# medians, ratios. Host A (the client side) runs on CPU 0, host B (the
# server side) on CPU 1: each host's snapnet engine group, and its
# application or TCP tool.
#
#   RTT of 64 B messages, p50 and p99: snapnet-bench pony-client --mode rtt
#       (blocking application, then spinning) against sockperf ping-pong
#       over TCP (--full-rtt). With one CPU per host, the spinning
#       application shares it with its engine, so it yields between polls.
#   Bulk: 64 KiB messages, 16 under way, against iperf3 (one TCP stream):
#       Gbit/s, and Gbit/s per busy core (all the machine's busy CPU time
#       during the run, from /proc/stat: engines, applications, softirqs).
#   Lookups: one-sided indirect reads of 64 B values (16, then 128 under
#       way: LOOKUP_WINDOWS) against a TCP request/response server doing the
#       same lookup (as many pipelined): operations per second and per busy
#       core.
#   CPU against offered message rate (with --cpu-vs-load): 64 B messages,
#       echoed, at fixed rates under compacting groups (the default delay
#       bound, and 20 us) and spreading groups; both daemons' CPU
#       (/proc/PID/stat), written as CSV and plotted.
#
# POLICY (default compacting) and LATENCY_BOUND_US (the daemon's default
# when unset) choose the groups of the first part; MTU the veth pair's MTU.
#
# Usage: scripts/bench-pony.sh [rounds] [seconds] [--cpu-vs-load]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-4}
CPU_VS_LOAD=${3:-}
POLICY=${POLICY:-compacting}
LOOKUP_WINDOWS=${LOOKUP_WINDOWS:-16 128}
# LATENCY_BOUND_US: the groups' queueing-delay bound (compacting naps
# within it); the daemon's default when unset.
BOUND_JSON=${LATENCY_BOUND_US:+, \"latency_bound_us\": $LATENCY_BOUND_US}
bash scripts/install-prereqs.sh iproute2 sockperf iperf3 fonts-dejavu-core >/dev/null
# BIN_DIR: where snapnet and snapnet-bench are (another build's, to compare
# two builds by hand); this checkout's release build by default.
if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release --bin snapnet --bin snapnet-bench >/dev/null 2>&1 ||
        cargo build --release --bin snapnet --bin snapnet-bench
fi
BIN_DIR=${BIN_DIR:-$PWD/target/release}
SN=$BIN_DIR/snapnet
BENCH=$BIN_DIR/snapnet-bench
tag=$$
A=snpa$tag B=snpb$tag DA=pa$tag DB=pb$tag
IP_A=10.98.$((tag % 200 + 20)).1 IP_B=10.98.$((tag % 200 + 20)).2
WORK=$(mktemp -d /tmp/snapnet-bench-pony.XXXXXX)
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
cleanup() {
    local rc=$?
    if [ $rc != 0 ]; then
        for f in "$WORK"/*.log; do echo "== $f"; tail -5 "$f"; done
        for h in 0 1; do
            [ -S "$WORK/control$h.sock" ] && "$SN" ctl --socket "$WORK/control$h.sock" pony status 2>&1 | head -40
        done
    fi
    stop_daemons
    ip netns pids "$A" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns pids "$B" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    sleep 0.2
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$A"; ip netns add "$B"
ip link add "$DA" netns "$A" type veth peer name "$DB" netns "$B"
ip -n "$A" addr add "$IP_A/24" dev "$DA"; ip -n "$B" addr add "$IP_B/24" dev "$DB"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
# MTU: the veth pair's MTU (underlays often run jumbo frames; with XDP on
# a veth, at most about 3500 bytes fit a page). TCP's segments are GSO-sized
# on a veth whatever the MTU; every Pony packet is one frame.
MTU=${MTU:-1500}
ip -n "$A" link set "$DA" mtu "$MTU"; ip -n "$B" link set "$DB" mtu "$MTU"
ip -n "$A" link set "$DA" up; ip -n "$B" link set "$DB" up

DAEMONS=()
start_daemons() { # policy
    DAEMONS=()
    for h in 0 1; do
        local ns dev ip
        ns=$([ $h = 0 ] && echo "$A" || echo "$B")
        dev=$([ $h = 0 ] && echo "$DA" || echo "$DB")
        ip=$([ $h = 0 ] && echo "$IP_A" || echo "$IP_B")
        rm -f "$WORK/pony$h.sock" "$WORK/control$h.sock"
        cat > "$WORK/host$h.json" <<JSON
{ "runtime_dir": "$WORK", "control_socket": "$WORK/control$h.sock",
  "uplinks": [ { "name": "wire", "interface": "$dev" } ],
  "groups": [ { "name": "g", "policy": "$1", "threads": 1, "cpus": [$h]$BOUND_JSON } ],
  "pony": { "socket": "$WORK/pony$h.sock", "uplink": "wire", "address": "$ip" } }
JSON
        ip netns exec "$ns" taskset -c $h "$SN" serve --config "$WORK/host$h.json" \
            >/dev/null 2>"$WORK/daemon$h.log" &
        DAEMONS+=($!)
    done
    for _ in $(seq 100); do
        [ -S "$WORK/pony0.sock" ] && [ -S "$WORK/pony1.sock" ] && return 0
        sleep 0.1
    done
    echo "daemons did not start"; cat "$WORK"/daemon*.log; exit 1
}
stop_daemons() {
    for p in "${DAEMONS[@]+"${DAEMONS[@]}"}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${DAEMONS[@]+"${DAEMONS[@]}"}"; do wait "$p" 2>/dev/null || true; done
    DAEMONS=()
}
inA() { ip netns exec "$A" taskset -c 0 "$@"; }
inB() { ip netns exec "$B" taskset -c 1 "$@"; }

# Busy jiffies and all jiffies of the whole machine.
cpu_now() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
# Busy cores between two cpu_now readings.
busy_cores() { # "b0 t0" "b1 t1"
    awk -v a="$1" -v b="$2" -v n="$NCPU" 'BEGIN{split(a,x," "); split(b,y," ");
        t=y[2]-x[2]; if (t<=0) {print 0} else {printf "%.3f", (y[1]-x[1])/t*n}}'
}
field() { # key line
    sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2" | head -1
}
median() { sort -g | awk '{v[NR]=$1} END{if(NR==0){print "nan"} else if(NR%2){print v[(NR+1)/2]} else {print (v[NR/2]+v[NR/2+1])/2}}'; }

# The TCP servers on host B (they block while idle).
inB sockperf sr --tcp -i "$IP_B" -p 11111 >/dev/null 2>&1 &
inB iperf3 -s -p 5201 >/dev/null 2>&1 &
inB "$BENCH" tcp-lookup-server --listen "$IP_B:7000" 2>>"$WORK/server.log" &
# snapnet on both hosts, with host B's blocking Pony server.
start_pony() {
    start_daemons "$POLICY"
    inB "$BENCH" pony-server --socket "$WORK/pony1.sock" --service 7 2>>"$WORK/server.log" &
    sleep 1
}
stop_pony() {
    pkill -f "pony-server --socket $WORK" 2>/dev/null || true
    stop_daemons
}

if [ -n "${SETUP_ONLY:-}" ]; then
    # For trying things by hand: the hosts stay up until this is stopped.
    start_pony
    echo "hosts up: A=$A ($IP_A, $WORK/pony0.sock, $WORK/control0.sock) B=$B ($IP_B)"
    sleep infinity
fi
pony() { inA "$BENCH" pony-client --socket "$WORK/pony0.sock" --peer "$IP_B" --seconds "$SECS" "$@" 2>>"$WORK/client.log" | grep '^result'; }
per_core() { # value "busy before" "busy after" [printf format]
    awk -v v="$1" -v c="$(busy_cores "$2" "$3")" -v f="${4:-%.3f}" 'BEGIN{printf f, (c>0 ? v/c : 0)}'
}
last() { echo ${R[$1]} | awk '{print $NF}'; }

declare -A R
add() { R[$1]+="$2 "; }
for round in $(seq "$ROUNDS"); do
    echo "== round $round"
    # Pony, then TCP with snapnet stopped: dedicated engines poll all the
    # time, and TCP should not share its CPUs with them.
    start_pony
    # RTT: blocking, then spinning (a spinning server for this run only,
    # on a service id of its own per round).
    l=$(pony --mode rtt --size 64)
    add pony_rtt_p50 "$(field p50_us "$l")"; add pony_rtt_p99 "$(field p99_us "$l")"
    spin_service=$((100 + round))
    ip netns exec "$B" taskset -c 1 "$BENCH" pony-server --socket "$WORK/pony1.sock" \
        --service "$spin_service" --spin 2>>"$WORK/server.log" &
    sleep 0.5
    l=$(pony --service "$spin_service" --mode rtt --size 64 --spin)
    add spin_rtt_p50 "$(field p50_us "$l")"; add spin_rtt_p99 "$(field p99_us "$l")"
    # Bulk, then lookups.
    c0=$(cpu_now); l=$(pony --mode bulk --size 65536 --window 16); c1=$(cpu_now)
    g=$(field gbps "$l"); add pony_gbps "$g"; add pony_gbps_core "$(per_core "$g" "$c0" "$c1")"
    for w in $LOOKUP_WINDOWS; do
        c0=$(cpu_now); l=$(pony --mode indirect --window "$w"); c1=$(cpu_now)
        r=$(field ops_per_sec "$l"); add pony_ops_$w "$r"; add pony_ops_core_$w "$(per_core "$r" "$c0" "$c1" %.0f)"
    done
    stop_pony

    out=$(inA sockperf pp --tcp -i "$IP_B" -p 11111 -m 64 -t "$SECS" --full-rtt 2>&1)
    add tcp_rtt_p50 "$(sed -n 's/.*percentile 50.000 = *\([0-9.]*\).*/\1/p' <<<"$out")"
    add tcp_rtt_p99 "$(sed -n 's/.*percentile 99.000 = *\([0-9.]*\).*/\1/p' <<<"$out")"
    c0=$(cpu_now)
    out=$(inA iperf3 -c "$IP_B" -p 5201 -t "$SECS" -J 2>/dev/null)
    c1=$(cpu_now)
    g=$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,3))' <<<"$out")
    add tcp_gbps "$g"; add tcp_gbps_core "$(per_core "$g" "$c0" "$c1")"
    for w in $LOOKUP_WINDOWS; do
        c0=$(cpu_now)
        l=$(inA "$BENCH" tcp-lookup-client --connect "$IP_B:7000" --seconds "$SECS" --window "$w" | grep '^result')
        c1=$(cpu_now)
        r=$(field ops_per_sec "$l"); add tcp_ops_$w "$r"; add tcp_ops_core_$w "$(per_core "$r" "$c0" "$c1" %.0f)"
    done
    echo "   rtt p50 pony $(last pony_rtt_p50) spin $(last spin_rtt_p50) tcp $(last tcp_rtt_p50) us;" \
        "bulk pony $(last pony_gbps) tcp $(last tcp_gbps) Gbit/s;" \
        "lookups$(for w in $LOOKUP_WINDOWS; do echo -n " x$w pony $(last pony_ops_$w) tcp $(last tcp_ops_$w)"; done) /s"
done

med() { tr ' ' '\n' <<<"${R[$1]}" | grep -v '^$' | median; }
ratio() { awk -v a="$(med "$1")" -v b="$(med "$2")" 'BEGIN{printf "%.2f", (b>0 ? a/b : 0)}'; }
echo
echo "== medians of $ROUNDS rounds, $SECS s each ($POLICY groups${LATENCY_BOUND_US:+, bound $LATENCY_BOUND_US us}; MTU $MTU; A on CPU 0, B on CPU 1)"
printf '%-34s %12s %12s %8s\n' figure pony tcp ratio
printf '%-34s %12s %12s %8s\n' "RTT 64 B p50 (us), blocking" "$(med pony_rtt_p50)" "$(med tcp_rtt_p50)" "$(ratio pony_rtt_p50 tcp_rtt_p50)"
printf '%-34s %12s %12s %8s\n' "RTT 64 B p99 (us), blocking" "$(med pony_rtt_p99)" "$(med tcp_rtt_p99)" "$(ratio pony_rtt_p99 tcp_rtt_p99)"
printf '%-34s %12s %12s %8s\n' "RTT 64 B p50 (us), spinning" "$(med spin_rtt_p50)" "$(med tcp_rtt_p50)" "$(ratio spin_rtt_p50 tcp_rtt_p50)"
printf '%-34s %12s %12s %8s\n' "RTT 64 B p99 (us), spinning" "$(med spin_rtt_p99)" "$(med tcp_rtt_p99)" "$(ratio spin_rtt_p99 tcp_rtt_p99)"
printf '%-34s %12s %12s %8s\n' "bulk (Gbit/s)" "$(med pony_gbps)" "$(med tcp_gbps)" "$(ratio pony_gbps tcp_gbps)"
printf '%-34s %12s %12s %8s\n' "bulk (Gbit/s per busy core)" "$(med pony_gbps_core)" "$(med tcp_gbps_core)" "$(ratio pony_gbps_core tcp_gbps_core)"
for w in $LOOKUP_WINDOWS; do
    printf '%-34s %12s %12s %8s\n' "lookups x$w (/s)" "$(med pony_ops_$w)" "$(med tcp_ops_$w)" "$(ratio pony_ops_$w tcp_ops_$w)"
    printf '%-34s %12s %12s %8s\n' "lookups x$w (/s per busy core)" "$(med pony_ops_core_$w)" "$(med tcp_ops_core_$w)" "$(ratio pony_ops_core_$w tcp_ops_core_$w)"
done

[ "$CPU_VS_LOAD" = "--cpu-vs-load" ] || exit 0
# CPU against offered load: both daemons' CPU while the client sends 64 B
# messages at each rate, under each policy.
CSV=${CSV:-docs/pony-cpu-vs-load.csv}
proc_jiffies() { awk '{print $14+$15}' "/proc/$1/stat"; }
echo "backend,load_pct,offered_pps,achieved_pps,cores,rtt_p50_us,rtt_p99_us" > "$CSV"
RATES=${RATES:-"0 100 1000 5000 20000"}
MAX_RATE=${MAX_RATE:-20000}
# compacting:20 is compacting with a 20 us queueing-delay bound: what a
# tighter bound costs in CPU, and gives in RTT.
for series in compacting compacting:20 spreading; do
    policy=${series%%:*}
    bound=${series#"$policy"}; bound=${bound#:}
    BOUND_JSON=${bound:+, \"latency_bound_us\": $bound}
    POLICY=$policy
    start_pony
    for rate in $RATES; do
        j0=$(( $(proc_jiffies "${DAEMONS[0]}") + $(proc_jiffies "${DAEMONS[1]}") )); t0=$(date +%s.%N)
        if [ "$rate" = 0 ]; then
            sleep "$SECS"; l="result achieved=0 p50_us=0 p99_us=0"
        else
            l=$(pony --mode load --rate "$rate")
        fi
        j1=$(( $(proc_jiffies "${DAEMONS[0]}") + $(proc_jiffies "${DAEMONS[1]}") )); t1=$(date +%s.%N)
        cores=$(awk -v j=$((j1 - j0)) -v hz="$HZ" -v t0="$t0" -v t1="$t1" 'BEGIN{printf "%.4f", j/hz/(t1-t0)}')
        pct=$(awk -v r="$rate" -v m="$MAX_RATE" 'BEGIN{printf "%.1f", 100*r/m}')
        echo "pony-$policy${bound:+-${bound}us},$pct,$rate,$(field achieved "$l"),$cores,$(field p50_us "$l"),$(field p99_us "$l")" | tee -a "$CSV"
    done
    stop_pony
done
"$BENCH" plot --csv "$CSV" --out "${CSV%.csv}.png"
echo "wrote $CSV and ${CSV%.csv}.png"
