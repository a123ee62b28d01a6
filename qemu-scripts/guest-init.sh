#!/bin/sh
# /init of the snapnet test guest (busybox ash); build-guest.sh copies this file
# into the initramfs. It is not meant to run on the host.
#
# Usage (kernel command line, all optional except snapnet.ip):
#   snapnet.ip=10.0.0.1/24     address of eth0 (required)
#   snapnet.peer=10.0.0.2      the other guest
#   snapnet.mtu=N              eth0 MTU
#   snapnet.queues=N           ethtool -L eth0 combined N (default: driver's choice)
#   snapnet.tests=a,b,c        run in order: features ping ping-big-fail pingloop
#                              iperf-server iperf-client hold recvfile sendfile
#   snapnet.wait_peer=20       seconds to wait until the peer answers a ping
#   snapnet.ping_count=5 snapnet.ping_size=56 snapnet.ping_interval=0.2 snapnet.df=1
#   snapnet.big_size=N         ping-big-fail size (default: snapnet.ping_size)
#   snapnet.duration=30        pingloop length (ping -i 0.2 -w duration)
#   snapnet.loop_interval=0.2  pingloop's ping interval (root may go below 0.2)
#   snapnet.loop_count=N       pingloop sends N pings and waits for the last
#                              reply (-c N -W 2) instead of stopping at -w
#   snapnet.loop_quiet=1       pingloop prints no SNAPNET-PING lines
#   snapnet.max_gap=N          pingloop fails when more than N icmp_seq are missing in a row
#                              (pingloop reports it as max_seq_gap, and the last
#                              icmp_seq answered as last_seq)
#   snapnet.iperf_time=5 snapnet.iperf_streams=1 snapnet.iperf_reverse=1
#   snapnet.iperf_min_gbps=X   iperf-client fails below X Gbit/s
#   snapnet.iperf_bitrate=100M iperf-client's target rate (iperf3 -b; default: as fast as it can)
#   snapnet.iperf_background=1 iperf-client runs beside the tests after it; the
#                              guest reports it and powers off once it ended
#   snapnet.hold=30            hold: seconds to stay up
#   snapnet.hold_until=iperf   hold: end early once this guest's iperf3 server finished
#                              (=sendfile: once its file was sent)
#   snapnet.file_port=5001     recvfile listens / sendfile connects on this TCP port
#   snapnet.file_mb=64         sendfile: size of the random file sent
#   snapnet.file_pause=0.1     sendfile: pause after each MiB (spreads the stream)
#   recvfile: receives one file over TCP (busybox nc) and reports its sha256;
#   sendfile: sends a random file to snapnet.peer in the background and
#   reports its sha256 at once (status=started)
#
# Output on the console (ttyS0), one line each:
#   SNAPNET-READY ip=... mac=... mtu=... carrier=0|1 kernel=... uptime=S
#   SNAPNET-RESULT test=<name> status=pass|fail key=value ...   (exactly one per test)
#   SNAPNET-PING <ping output line>                              (pingloop only)
#   SNAPNET-LOG <text>                                           (diagnostics)
#   SNAPNET-DONE uptime=S carrier_changes=N
# A boot that cannot bring eth0 up prints
#   SNAPNET-RESULT test=boot status=fail reason=...
# and then SNAPNET-DONE. The guest always ends with `poweroff -f`.

export PATH=/bin
umask 022
# Debian's static busybox runs its own applets for bare command names
# (FEATURE_SH_STANDALONE), so iputils ping must be called by its path.
PING=/bin/ping
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp
mount -t tmpfs tmpfs /tmp

# The firmware's last line ("Booting from ROM..") has no newline.
echo

now() { cut -d. -f1 /proc/uptime; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# How often eth0's link went down or up since boot (a backend reconnect
# shows here).
carrier_changes() { cat /sys/class/net/eth0/carrier_changes 2>/dev/null || echo -; }
log() { echo "SNAPNET-LOG $*"; }
result() { t=$1; s=$2; shift 2; echo "SNAPNET-RESULT test=$t status=$s${*:+ $*}"; }
finish() {
    echo "SNAPNET-DONE uptime=$(uptime_s) carrier_changes=$(carrier_changes)"
    sync
    poweroff -f
    sleep 10
}
# Prints the value of snapnet.<name>, or $2 when unset or empty.
get() { eval "_v=\${P_$1-}"; if [ -n "$_v" ]; then echo "$_v"; else echo "$2"; fi; }
# Prints lines of $2 (multi-line text) as SNAPNET-LOG lines with prefix $1.
log_lines() { echo "$2" | while IFS= read -r _l; do echo "SNAPNET-LOG $1: $_l"; done; }

# Parameters: snapnet.key=value -> P_key (key reduced to [A-Za-z0-9_]).
# shellcheck disable=SC2013 # the command line is split into words on purpose
for w in $(cat /proc/cmdline); do
    case "$w" in
        snapnet.*=*)
            k=${w%%=*}
            k=$(echo "${k#snapnet.}" | tr -c 'A-Za-z0-9_\n' '_')
            # shellcheck disable=SC2034 # read by the eval below
            v=${w#*=}
            eval "P_$k=\$v"
            ;;
    esac
done

IP=$(get ip "")
PEER=$(get peer "")
MTU=$(get mtu "")

while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m" 2>/tmp/insmod.err || log "insmod $m failed: $(cat /tmp/insmod.err)"
done </lib/modules/load-order

boot_fail() {
    result boot fail "reason=$1"
    finish
}

[ -n "$IP" ] || boot_fail no-ip-parameter
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -e /sys/class/net/eth0 ] || boot_fail no-eth0
ip link set lo up
if [ -n "$MTU" ]; then
    ip link set eth0 mtu "$MTU" 2>/tmp/ip.err || boot_fail "mtu-$MTU-rejected:$(tr ' ' '_' </tmp/ip.err)"
fi
Q=$(get queues "")
if [ -n "$Q" ]; then
    ethtool -L eth0 combined "$Q" 2>/tmp/eth.err || log "ethtool -L eth0 combined $Q failed: $(cat /tmp/eth.err)"
fi
ip addr add "$IP" dev eth0 || boot_fail bad-ip
ip link set eth0 up || boot_fail link-up-failed
i=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
echo "SNAPNET-READY ip=$IP mac=$(cat /sys/class/net/eth0/address) mtu=$(cat /sys/class/net/eth0/mtu)" \
    "carrier=$(cat /sys/class/net/eth0/carrier 2>/dev/null || echo 0) carrier_changes=$(carrier_changes)" \
    "kernel=$(uname -r) uptime=$(uptime_s)"

# Waits until the peer answers a ping (ARP resolved, path up). Sets WAITED.
wait_peer() {
    _limit=$(get wait_peer 20)
    _start=$(now)
    WAITED=0
    while :; do
        "$PING" -c 1 -W 1 "$PEER" >/dev/null 2>&1 && { WAITED=$(($(now) - _start)); return 0; }
        WAITED=$(($(now) - _start))
        [ "$WAITED" -ge "$_limit" ] && return 1
        sleep 0.2
    done
}

# ping summary fields of the text in $1: SENT RECV AVG
ping_stats() {
    SENT=$(echo "$1" | sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p')
    RECV=$(echo "$1" | sed -n 's/.*transmitted, \([0-9]*\) received.*/\1/p')
    AVG=$(echo "$1" | sed -n 's|^rtt [^=]*= [^/]*/\([^/]*\)/.*|\1|p')
    SENT=${SENT:-0}
    RECV=${RECV:-0}
    AVG=${AVG:--}
}

t_features() {
    dev=""
    for d in /sys/bus/virtio/devices/*; do
        [ "$(cat "$d/device" 2>/dev/null)" = 0x0001 ] && dev=$d
    done
    if [ -z "$dev" ]; then
        result features fail reason=no-virtio-net-device
        return
    fi
    bits=$(cat "$dev/features")
    # Bit string (bit 0 first) -> hex and names of the interesting bits.
    decoded=$(echo "$bits" | awk '{
        split("CSUM GUEST_CSUM CTRL_GUEST_OFFLOADS MTU - MAC - GUEST_TSO4 GUEST_TSO6 GUEST_ECN GUEST_UFO HOST_TSO4 HOST_TSO6 HOST_ECN HOST_UFO MRG_RXBUF STATUS CTRL_VQ CTRL_RX CTRL_VLAN CTRL_RX_EXTRA GUEST_ANNOUNCE MQ CTRL_MAC_ADDR - - - - INDIRECT_DESC EVENT_IDX - - VERSION_1 ACCESS_PLATFORM RING_PACKED IN_ORDER ORDER_PLATFORM SR_IOV NOTIFICATION_DATA", n, " ")
        names = ""
        for (i = 1; i <= length($0); i++)
            if (substr($0, i, 1) == "1") {
                nm = (i <= 39 && n[i] != "-") ? n[i] : ("BIT" (i - 1))
                names = names (names == "" ? "" : ",") nm
            }
        hex = ""
        for (i = 1; i <= length($0); i += 4) {
            v = 0
            for (j = 0; j < 4; j++) if (substr($0, i + j, 1) == "1") v += substr("1248", j + 1, 1)
            hex = substr("0123456789abcdef", v + 1, 1) hex
        }
        sub(/^0+/, "", hex)
        print "0x" (hex == "" ? "0" : hex), names
    }')
    hexf=${decoded%% *}
    names=${decoded#* }
    k=$(ethtool -k eth0 2>&1)
    kv() { echo "$k" | awk -F': ' -v key="$1" '{gsub(/^[ \t]+/, "", $1)} $1 == key {split($2, a, " "); print a[1]; exit}'; }
    l=$(ethtool -l eth0 2>&1)
    queues=$(echo "$l" | awk '/^Current hardware/ {c = 1} c && /^Combined:/ {print $2; exit}')
    maxq=$(echo "$l" | awk '/^Pre-set maximums/ {c = 1} c && /^Combined:/ {print $2; exit}')
    result features pass "virtio_features=$bits virtio_features_hex=$hexf names=$names" \
        "csum=$(kv tx-checksumming) rxcsum=$(kv rx-checksumming) sg=$(kv scatter-gather)" \
        "tso4=$(kv tx-tcp-segmentation) tso6=$(kv tx-tcp6-segmentation) gso=$(kv generic-segmentation-offload)" \
        "gro=$(kv generic-receive-offload) queues=${queues:-?} max_queues=${maxq:-?}" \
        "mtu=$(cat /sys/class/net/eth0/mtu)"
}

t_ping() {
    name=$1
    cnt=$(get ping_count 5)
    size=$(get ping_size 56)
    [ "$name" = ping-big-fail ] && size=$(get big_size "$size")
    iv=$(get ping_interval 0.2)
    if [ -z "$PEER" ]; then result "$name" fail reason=no-peer-parameter; return; fi
    if ! wait_peer; then
        result "$name" fail reason=peer-unreachable "waited=$WAITED"
        return
    fi
    if [ "$name" = ping-big-fail ] || [ "$(get df 0)" = 1 ]; then
        out=$("$PING" -c "$cnt" -W 2 -i "$iv" -s "$size" -M 'do' "$PEER" 2>&1)
    else
        out=$("$PING" -c "$cnt" -W 2 -i "$iv" -s "$size" "$PEER" 2>&1)
    fi
    ping_stats "$out"
    f="sent=$SENT received=$RECV rtt_avg_ms=$AVG size=$size waited=$WAITED"
    if [ "$name" = ping-big-fail ]; then
        if echo "$out" | grep -q -e 'local error' -e 'too long'; then
            # The frame never left this guest (its own MTU is smaller).
            result "$name" fail "$f" reason=local-emsgsize
            log_lines "$name" "$out"
        elif [ "$RECV" = 0 ]; then
            result "$name" pass "$f"
        else
            result "$name" fail "$f" reason=got-replies
        fi
    elif [ "$SENT" -gt 0 ] && [ "$RECV" = "$SENT" ]; then
        result "$name" pass "$f"
    else
        result "$name" fail "$f"
        log_lines "$name" "$out"
    fi
}

t_pingloop() {
    dur=$(get duration 30)
    if [ -z "$PEER" ]; then result pingloop fail reason=no-peer-parameter; return; fi
    if ! wait_peer; then
        result pingloop fail reason=peer-unreachable "waited=$WAITED"
        return
    fi
    iv=$(get loop_interval 0.2)
    count=$(get loop_count "")
    quiet=$(get loop_quiet 0)
    : >/tmp/pingloop.out
    log "pingloop started"
    if [ -n "$count" ]; then
        set -- -c "$count" -W 2
    else
        set -- -w "$dur"
    fi
    "$PING" -i "$iv" "$@" "$PEER" 2>&1 | while IFS= read -r l; do
        [ "$quiet" = 1 ] || echo "SNAPNET-PING $l"
        echo "$l" >>/tmp/pingloop.out
    done
    out=$(cat /tmp/pingloop.out)
    ping_stats "$out"
    gap=$(echo "$out" | sed -n 's/.*icmp_seq=\([0-9]*\).*/\1/p' | awk '
        NR == 1 {m = $1 - 1; p = $1; next}
        {g = $1 - p - 1; if (g > m) m = g; p = $1}
        END {print (NR ? m : -1)}')
    last=$(echo "$out" | sed -n 's/.*icmp_seq=\([0-9]*\).*/\1/p' | tail -n 1)
    rttmax=$(echo "$out" | sed -n 's|.*min/avg/max[^=]*= [0-9.]*/[0-9.]*/\([0-9.]*\)/.*|\1|p')
    f="sent=$SENT received=$RECV max_seq_gap=$gap last_seq=${last:--} rtt_avg_ms=$AVG rtt_max_ms=${rttmax:--} duration=$dur"
    f="$f interval=$iv waited=$WAITED"
    maxgap=$(get max_gap "")
    if [ "$RECV" -gt 0 ] && { [ -z "$maxgap" ] || [ "$gap" -le "$maxgap" ]; }; then
        result pingloop pass "$f"
    else
        result pingloop fail "$f"
    fi
}

t_iperf_server() {
    rm -f /tmp/iperf-server.rc
    (
        iperf3 -s -1 >/tmp/iperf-server.log 2>&1
        echo $? >/tmp/iperf-server.rc
    ) &
    result iperf-server started
}

t_iperf_client() {
    tm=$(get iperf_time 5)
    streams=$(get iperf_streams 1)
    if [ -z "$PEER" ]; then result iperf-client fail reason=no-peer-parameter; return; fi
    if ! wait_peer; then
        result iperf-client fail reason=peer-unreachable "waited=$WAITED"
        return
    fi
    rev=""
    [ "$(get iperf_reverse 0)" = 1 ] && rev=-R
    bitrate=$(get iperf_bitrate "")
    limit=$(get wait_peer 20)
    start=$(now)
    # Retry while the server port is closed or busy (the peer may start its
    # server later); a refused connection does not consume `iperf3 -s -1`.
    while :; do
        # shellcheck disable=SC2086 # $rev is empty or one word
        out=$(iperf3 -c "$PEER" -t "$tm" -P "$streams" $rev ${bitrate:+-b "$bitrate"} -J 2>&1)
        if echo "$out" | grep -q -e '"error"' -e 'error -'; then
            if echo "$out" | grep -q -e 'unable to connect' -e 'busy' && [ $(($(now) - start)) -lt "$limit" ]; then
                sleep 0.5
                continue
            fi
        fi
        break
    done
    bps() { echo "$out" | awk -v sec="\"$1\"" 'index($0, sec) {s = 1} s && /"bits_per_second"/ {
        sub(/.*:/, ""); gsub(/[ \t,]/, ""); print; exit}'; }
    snd=$(bps sum_sent)
    rcv=$(bps sum_received)
    retr=$(echo "$out" | awk '/"sum_sent"/ {s = 1} s && /"retransmits"/ {sub(/.*:/, ""); gsub(/[ \t,]/, ""); print; exit}')
    if [ -z "$snd" ]; then
        err=$(echo "$out" | sed -n 's/.*"error":[ \t]*"\(.*\)".*/\1/p' | head -n1 | tr ' ' '_')
        result iperf-client fail "reason=${err:-no-result}"
        log_lines iperf-client "$(echo "$out" | tail -n 5)"
        return
    fi
    gbps=$(awk -v b="$snd" 'BEGIN {printf "%.3f", b / 1e9}')
    rgbps=$(awk -v b="${rcv:-0}" 'BEGIN {printf "%.3f", b / 1e9}')
    f="gbps=$gbps recv_gbps=$rgbps retransmits=${retr:--} time=$tm streams=$streams reverse=$(get iperf_reverse 0)"
    min=$(get iperf_min_gbps 0)
    if awk -v g="$gbps" -v m="$min" 'BEGIN {exit !(g > 0 && g >= m)}'; then
        result iperf-client pass "$f"
    else
        result iperf-client fail "$f"
    fi
}

t_recvfile() {
    port=$(get file_port 5001)
    printf '#!/bin/sh\ncat >/tmp/recvfile\n' >/tmp/recvfile.sh
    chmod +x /tmp/recvfile.sh
    log "recvfile listening on $port"
    # -e: nc ends when the sender closes (a plain listener would also end
    # at EOF on its own stdin).
    if nc -l -p "$port" -e /tmp/recvfile.sh 2>/tmp/recvfile.err; then
        sum=$(sha256sum /tmp/recvfile | cut -d' ' -f1)
        result recvfile pass "sha256=$sum bytes=$(wc -c </tmp/recvfile) uptime=$(uptime_s)"
    else
        result recvfile fail "reason=$(tr ' ' '_' </tmp/recvfile.err)"
    fi
}

t_sendfile() {
    port=$(get file_port 5001)
    mb=$(get file_mb 64)
    pause=$(get file_pause 0.1)
    if [ -z "$PEER" ]; then result sendfile fail reason=no-peer-parameter; return; fi
    if ! wait_peer; then
        result sendfile fail reason=peer-unreachable "waited=$WAITED"
        return
    fi
    dd if=/dev/urandom of=/tmp/sendfile bs=1M count="$mb" 2>/dev/null
    sum=$(sha256sum /tmp/sendfile | cut -d' ' -f1)
    rm -f /tmp/sendfile.rc
    (
        i=0
        start=$(now)
        while [ $i -lt "$mb" ]; do
            dd if=/tmp/sendfile bs=1M skip=$i count=1 2>/dev/null
            i=$((i + 1))
            sleep "$pause"
        done | nc -w 20 "$PEER" "$port" 2>/tmp/sendfile.err
        echo "$? $(($(now) - start))" >/tmp/sendfile.rc
    ) &
    result sendfile started "sha256=$sum bytes=$((mb * 1048576))"
}

t_hold() {
    h=$(get hold 30)
    hu=$(get hold_until "")
    start=$(now)
    why=timeout
    while [ $(($(now) - start)) -lt "$h" ]; do
        if [ "$hu" = iperf ] && [ -f /tmp/iperf-server.rc ]; then
            why=iperf-server-done
            break
        fi
        if [ "$hu" = sendfile ] && [ -f /tmp/sendfile.rc ]; then
            why=sendfile-done
            break
        fi
        sleep 0.2
    done
    f="held=$(($(now) - start)) ended=$why"
    if [ -f /tmp/iperf-server.rc ]; then
        f="$f iperf_server_rc=$(cat /tmp/iperf-server.rc)"
    fi
    if [ -f /tmp/sendfile.rc ]; then
        read -r _rc _secs </tmp/sendfile.rc
        f="$f sendfile_rc=$_rc sendfile_secs=$_secs"
    fi
    result hold pass "$f"
}

for t in $(get tests "" | tr ',' ' '); do
    case "$t" in
        features) t_features ;;
        ping) t_ping ping ;;
        ping-big-fail) t_ping ping-big-fail ;;
        pingloop) t_pingloop ;;
        iperf-server) t_iperf_server ;;
        iperf-client)
            if [ "$(get iperf_background 0)" = 1 ]; then
                t_iperf_client &
                IPERF_CLIENT_PID=$!
            else
                t_iperf_client
            fi
            ;;
        hold) t_hold ;;
        recvfile) t_recvfile ;;
        sendfile) t_sendfile ;;
        *) result "$t" fail reason=unknown-test ;;
    esac
done
[ -n "${IPERF_CLIENT_PID-}" ] && wait "$IPERF_CLIENT_PID"
finish
