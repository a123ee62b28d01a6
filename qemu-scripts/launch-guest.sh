#!/usr/bin/env bash
# Launches one snapnet test guest attached to a snapnet vhost-user vNIC socket.
# The guest runs the tests named in --cmdline (see guest-init.sh), prints
# SNAPNET-* lines on its serial console and powers off, so QEMU exits by itself.
#
# Usage: qemu-scripts/launch-guest.sh --socket PATH [options] [-- extra QEMU args]
#   --socket PATH          vhost-user socket of the vNIC (required)
#   --socket-role R        server: snapnet is the socket server, QEMU connects
#                          and reconnects (default); client: QEMU listens
#                          (server=on,wait=off) and snapnet connects
#   --mac MAC              guest MAC (default: derived from the socket path)
#   --host-mtu N           virtio-net host_mtu=N (guest sees VIRTIO_NET_F_MTU; QEMU
#                          sends VHOST_USER_NET_SET_MTU to snapnet)
#   --queues N             queue pairs (default 1; N>1 adds -smp N, queues=N, mq=on)
#   --mem MB               guest memory, memfd share=on (default 256)
#   --qemu BIN             QEMU binary or wrapper (default qemu-system-x86_64)
#   --cmdline "ARGS"       extra kernel arguments, e.g. "snapnet.ip=10.0.0.1/24 ..."
#   --serial-log FILE      serial console to FILE (default: stdout)
#   --timeout SECONDS      kill QEMU after SECONDS (QEMU runs under `timeout`)
#   --pidfile FILE         QEMU writes its pid there
#   --accel auto|kvm|tcg   default auto: KVM when the guest kernel boots under
#                          it (probed once per host boot), else TCG
#   --kernel F --initrd F  guest files (default: $GUEST_KERNEL/$GUEST_INITRD or
#                          the output of build-guest.sh)
#   --name NAME            QEMU -name
#   --dry-run              print the command instead of running it
#
# Environment: SNAPNET_GUEST_CACHE (see build-guest.sh).
# Exit status: QEMU's (124 when --timeout fired). Informational lines go to
# stderr as `launch-guest: ...`.
#
# QEMU < 8 under TCG crashes when a vhost-user virtio-net device enables MSI-X,
# so `vectors=0` (INTx) is added exactly in that case.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
socket="" role=server mac="" host_mtu="" queues=1 mem=256 qemu=qemu-system-x86_64
cmdline="" serial_log="" tmo="" pidfile="" accel=auto name="" dry=0
kernel=${GUEST_KERNEL:-} initrd=${GUEST_INITRD:-}
extra=()

die() { echo "launch-guest.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --socket) need "$@"; socket=$2; shift ;;
        --socket-role) need "$@"; role=$2; shift ;;
        --mac) need "$@"; mac=$2; shift ;;
        --host-mtu) need "$@"; host_mtu=$2; shift ;;
        --queues) need "$@"; queues=$2; shift ;;
        --mem) need "$@"; mem=$2; shift ;;
        --qemu) need "$@"; qemu=$2; shift ;;
        --cmdline) need "$@"; cmdline=$2; shift ;;
        --serial-log) need "$@"; serial_log=$2; shift ;;
        --timeout) need "$@"; tmo=$2; shift ;;
        --pidfile) need "$@"; pidfile=$2; shift ;;
        --accel) need "$@"; accel=$2; shift ;;
        --kernel) need "$@"; kernel=$2; shift ;;
        --initrd) need "$@"; initrd=$2; shift ;;
        --name) need "$@"; name=$2; shift ;;
        --dry-run) dry=1 ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

[ -n "$socket" ] || die "--socket PATH is required"
case "$role" in server|client) ;; *) die "--socket-role must be server or client" ;; esac
[[ "$queues" =~ ^[1-9][0-9]*$ ]] || die "--queues must be a positive integer"
[[ "$mem" =~ ^[1-9][0-9]*$ ]] || die "--mem must be a number of MiB"
[ -z "$tmo" ] || [[ "$tmo" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a number of seconds"
case "$accel" in auto|kvm|tcg) ;; *) die "--accel must be auto, kvm or tcg" ;; esac
command -v "$qemu" >/dev/null 2>&1 || die "QEMU binary $qemu not found"

if [ -z "$kernel" ] || [ -z "$initrd" ]; then
    eval "$("$here/build-guest.sh" --quiet)"
    kernel=${kernel:-$GUEST_KERNEL}
    initrd=${initrd:-$GUEST_INITRD}
fi
{ [ -r "$kernel" ] && [ -r "$initrd" ]; } || die "guest kernel/initrd not readable: $kernel $initrd"

if [ -z "$mac" ]; then
    h=$(printf '%s' "$socket" | md5sum)
    mac="52:54:00:${h:0:2}:${h:2:2}:${h:4:2}"
fi

# QEMU version (major, minor) for the MSI-X workaround and chardev options.
ver=$("$qemu" --version | sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n1)
[ -n "$ver" ] || die "cannot parse '$qemu --version'"
read -r vmaj vmin <<<"$ver"

# KVM probe: /dev/kvm may exist without being usable. Some nested
# paravirtual hosts abort at once ("failed to set MSR"), which creating and
# resetting a machine with -S shows in a fraction of a second; others pass
# that and then stop the guest kernel early in its boot at a KVM emulation
# failure. So the guest kernel itself boots, without an initrd, until it
# panics for want of a root file system (about a second where KVM works);
# the answer is kept for this boot of the host.
kvm_boots_kernel() {
    local probe_log
    probe_log=$(mktemp /tmp/snapnet-kvm-probe.XXXXXX)
    (ulimit -c 0; timeout 10 "$qemu" -accel kvm -M pc -cpu host -m 256 -nodefaults \
        -display none -no-reboot -kernel "$kernel" -append "console=ttyS0 panic=-1" \
        -serial "file:$probe_log" >/dev/null 2>&1) 2>/dev/null
    local ok=1
    grep -q "Kernel panic" "$probe_log" && ok=0
    rm -f "$probe_log"
    return $ok
}
if [ "$accel" = auto ]; then
    accel=tcg
    verdict=/tmp/snapnet-kvm-probe-$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)
    if [ -f "$verdict" ]; then
        accel=$(cat "$verdict")
    elif [ -r /dev/kvm ] && [ -w /dev/kvm ] \
        && (ulimit -c 0; echo quit | timeout 10 "$qemu" -accel kvm -M pc -cpu host -nodefaults \
            -display none -S -monitor stdio >/dev/null 2>&1) 2>/dev/null \
        && [ -n "$kernel" ] && kvm_boots_kernel; then
        accel=kvm
    fi
    [ -f "$verdict" ] || echo "$accel" >"$verdict"
fi

vectors=""
if [ "$queues" -gt 1 ]; then
    vectors=",vectors=$((2 * queues + 2))"
fi
if [ "$vmaj" -lt 8 ] && [ "$accel" != kvm ]; then
    vectors=",vectors=0"
fi

# QEMU < 9.0 under TCG loses guest writes during live migration: when a RAM
# block's length is a multiple of 64 pages, its dirty-bitmap sync takes a
# word-at-a-time path that clears dirty bits without flushing the TCG TLB,
# so stores through cached TLB entries are never marked dirty again and the
# destination resumes with stale pages (fixed in QEMU 9.0 by "physmem: Fix
# migration dirty bitmap coherency with TCG memory access").
# 8 KiB more RAM keeps such QEMUs on the page-at-a-time path, which flushes.
mem_size="${mem}M"
if [ "$vmaj" -lt 9 ] && [ "$accel" != kvm ]; then
    mem_size="$((mem * 1024 + 8))K"
fi

if [ "$queues" -gt 1 ] && { [ "$vmaj" -lt 8 ] || { [ "$vmaj" -eq 8 ] && [ "$vmin" -lt 1 ]; }; }; then
    # Seen with 7.2: each queue pair's vhost device sends its own ADD_MEM_REG
    # for the same regions; snapnet (CONFIGURE_MEM_SLOTS) rejects the duplicate
    # ("memory regions intersect") and QEMU reconnects in a loop.
    echo "launch-guest: warning: QEMU $vmaj.$vmin with --queues $queues: duplicate ADD_MEM_REG per queue pair," \
        "snapnet drops the connection; use QEMU >= 8.1 (fetch-qemu10.sh) for multiqueue" >&2
fi

if [ "$role" = server ]; then
    # snapnet listens; QEMU connects and reconnects after snapnet restarts.
    # `reconnect` (seconds) was deprecated in 9.2 for `reconnect-ms`.
    if [ "$vmaj" -gt 9 ] || { [ "$vmaj" -eq 9 ] && [ "$vmin" -ge 2 ]; }; then
        chardev="socket,id=chr0,path=$socket,reconnect-ms=1000"
    else
        chardev="socket,id=chr0,path=$socket,reconnect=1"
    fi
else
    chardev="socket,id=chr0,path=$socket,server=on,wait=off"
fi
netdev="vhost-user,id=net0,chardev=chr0"
device="virtio-net-pci,netdev=net0,mac=$mac,romfile="
if [ "$queues" -gt 1 ]; then
    netdev="$netdev,queues=$queues"
    device="$device,mq=on"
fi
[ -n "$host_mtu" ] && device="$device,host_mtu=$host_mtu"
device="$device$vectors"

cmd=()
if [ -n "$tmo" ]; then
    cmd=(timeout -k 5)
    [ -t 0 ] && cmd+=(--foreground)
    cmd+=("$tmo")
fi
cmd+=("$qemu" -nographic -nodefaults -no-reboot -no-user-config)
[ -n "$name" ] && cmd+=(-name "$name")
if [ "$accel" = kvm ]; then
    cmd+=(-accel kvm -cpu host)
else
    cmd+=(-accel tcg)
fi
[ "$queues" -gt 1 ] && cmd+=(-smp "$queues")
# shellcheck disable=SC2054 # commas belong to QEMU option values
cmd+=(-m "$mem_size"
    -object "memory-backend-memfd,id=mem,size=$mem_size,share=on" -numa node,memdev=mem
    -chardev "$chardev" -netdev "$netdev" -device "$device"
    -kernel "$kernel" -initrd "$initrd"
    -append "console=ttyS0 quiet panic=-1 $cmdline")
if [ -n "$serial_log" ]; then
    cmd+=(-serial "file:$serial_log" -monitor none)
else
    cmd+=(-serial mon:stdio)
fi
[ -n "$pidfile" ] && cmd+=(-pidfile "$pidfile")
cmd+=("${extra[@]}")

echo "launch-guest: QEMU $vmaj.$vmin accel=$accel queues=$queues mac=$mac role=$role${vectors:+ ${vectors#,}}" >&2
if [ "$dry" = 1 ]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
