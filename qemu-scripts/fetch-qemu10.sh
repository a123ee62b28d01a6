#!/usr/bin/env bash
# Fetches QEMU 10 from <codename>-backports (Debian 12: bookworm-backports)
# without installing anything: a private apt state directory resolves which
# packages this machine lacks or has too old for qemu-system-x86 from
# backports (simulated install against the host's dpkg status), `apt-get
# download` fetches them and `dpkg -x` unpacks them into the cache. A wrapper
# sets LD_LIBRARY_PATH, QEMU_MODULE_DIR and -L (firmware/data dir).
#
# Usage: qemu-scripts/fetch-qemu10.sh [--refresh] [--quiet]
#   --refresh   fetch again even if a working cached QEMU 10 exists
#   --quiet     no progress messages on stderr
#
# Environment: SNAPNET_GUEST_CACHE (default /var/cache/snapnet-guest); the
# result lives in $SNAPNET_GUEST_CACHE/qemu10-<version>/.
#
# Output (stdout, for `eval "$(qemu-scripts/fetch-qemu10.sh)"`):
#   QEMU10=/var/cache/snapnet-guest/qemu10-<version>/bin/qemu-system-x86_64
# The wrapper is checked to print `QEMU emulator version 10.x` before it is
# reported; a cached wrapper is only re-checked (~50 ms).
set -euo pipefail

cache=${SNAPNET_GUEST_CACHE:-/var/cache/snapnet-guest}
refresh=0
quiet=0
while [ $# -gt 0 ]; do
    case "$1" in
        --refresh) refresh=1 ;;
        --quiet) quiet=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "fetch-qemu10.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
log() { [ "$quiet" = 1 ] || echo "fetch-qemu10: $*" >&2; }

is_qemu10() { "$1" --version 2>/dev/null | head -n1 | grep -q '^QEMU emulator version 10\.'; }

if [ "$refresh" = 0 ]; then
    # Newest cached build that still runs.
    for w in $(find "$cache" -maxdepth 3 -path "$cache/qemu10-*/bin/qemu-system-x86_64" 2>/dev/null | sort -rV); do
        if is_qemu10 "$w"; then
            echo "QEMU10=$w"
            exit 0
        fi
    done
fi

if [ "$(id -u)" != 0 ]; then
    echo "fetch-qemu10.sh: run as root (apt-get download, dpkg -x into the cache)" >&2
    exit 1
fi

codename=bookworm
if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    c=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$c" ] && codename=$c
fi

# The Debian mirror this machine already uses (one-line or deb822 sources).
mirror=$( { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } \
    | sed -n -e 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([a-z]\+:\/\/[^[:space:]]*\/debian\)\/\?[[:space:]].*/\2/p' \
        -e 's/^URIs:.*[[:space:]]\([a-z]\+:\/\/[^[:space:]]*\/debian\)\/\?\([[:space:]].*\)\?$/\1/p' \
    | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { echo "fetch-qemu10.sh: missing $keyring (debian-archive-keyring)" >&2; exit 1; }

mkdir -p "$cache"
work=$(mktemp -d "$cache/qemu10-tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
a="$work/apt"
mkdir -p "$a/state/lists/partial" "$a/cache/archives/partial" "$a/etc/sources.list.d" \
    "$a/etc/preferences.d" "$work/debs" "$work/root"
{
    echo "deb [signed-by=$keyring] $mirror $codename main"
    echo "deb [signed-by=$keyring] $mirror $codename-updates main"
    echo "deb [signed-by=$keyring] $mirror-security $codename-security main"
    echo "deb [signed-by=$keyring] $mirror $codename-backports main"
} >"$a/etc/sources.list"
: >"$a/etc/preferences"
aptopts=(-o "Dir::State=$a/state" -o "Dir::Cache=$a/cache"
    -o "Dir::Etc::sourcelist=$a/etc/sources.list" -o "Dir::Etc::sourceparts=$a/etc/sources.list.d"
    -o "Dir::Etc::preferences=$a/etc/preferences" -o "Dir::Etc::preferencesparts=$a/etc/preferences.d"
    -o "Dir::State::status=/var/lib/dpkg/status" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")

log "apt-get update ($mirror $codename, $codename-backports) in a private state dir"
apt-get -q "${aptopts[@]}" update >"$work/update.log" 2>&1 || { cat "$work/update.log" >&2; exit 1; }

# Which packages would be installed or upgraded for qemu-system-x86 from
# backports: exactly what this machine lacks or has too old.
resolve() {
    apt-get "${aptopts[@]}" -s --no-install-recommends install "$@" 2>&1 \
        | sed -n 's/^Inst \([^ ]*\) \(\[[^]]*\] \)\?(\([^ ]*\) .*/\1=\3/p'
}
mapfile -t pkgs < <(resolve "qemu-system-x86/$codename-backports")
if ! printf '%s\n' "${pkgs[@]}" | grep -q '^qemu-system-x86=.*bpo'; then
    mapfile -t pkgs < <(resolve -t "$codename-backports" qemu-system-x86)
fi
printf '%s\n' "${pkgs[@]}" | grep -q '^qemu-system-x86=' \
    || { echo "fetch-qemu10.sh: cannot resolve qemu-system-x86 in $codename-backports" >&2; exit 1; }
qver=$(printf '%s\n' "${pkgs[@]}" | sed -n 's/^qemu-system-x86=//p')
log "downloading ${pkgs[*]}"
(cd "$work/debs" && apt-get -q "${aptopts[@]}" download "${pkgs[@]}" >"$work/download.log" 2>&1) \
    || { cat "$work/download.log" >&2; exit 1; }
for deb in "$work"/debs/*.deb; do
    dpkg -x "$deb" "$work/root"
done

ver=${qver#*:}
ver=${ver%%[+~-]*}
dest="$cache/qemu10-$ver"
rm -rf "$dest.new"
mkdir -p "$dest.new/bin"
mv "$work/root" "$dest.new/root"
# Absolute symlinks (e.g. firmware links in /usr/share/qemu) must point into
# the unpacked tree when their target is there.
find "$dest.new/root" -type l | while read -r l; do
    t=$(readlink "$l")
    case "$t" in
        /*) if [ -e "$dest.new/root$t" ]; then ln -sfn "$dest/root$t" "$l"; fi ;;
    esac
done
printf '%s\n' "${pkgs[@]}" >"$dest.new/packages"
# Firmware/data directories of the unpacked packages go first (-L, repeatable);
# QEMU's built-in paths (the host's /usr/share/qemu, seabios, ipxe) follow.
ldirs=""
for d in usr/share/qemu usr/share/seabios usr/lib/ipxe/qemu; do
    [ -d "$dest.new/root/$d" ] && ldirs="$ldirs -L \"\$root/$d\""
done
cat >"$dest.new/bin/qemu-system-x86_64" <<EOF
#!/bin/sh
# QEMU $qver from $codename-backports, unpacked by fetch-qemu10.sh (not installed).
root="$dest/root"
LD_LIBRARY_PATH="\$root/usr/lib/x86_64-linux-gnu:\$root/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
QEMU_MODULE_DIR="\$root/usr/lib/x86_64-linux-gnu/qemu"
export LD_LIBRARY_PATH QEMU_MODULE_DIR
exec "\$root/usr/bin/qemu-system-x86_64"$ldirs "\$@"
EOF
chmod 0755 "$dest.new/bin/qemu-system-x86_64"
rm -rf "$dest"
mv "$dest.new" "$dest"

if ! is_qemu10 "$dest/bin/qemu-system-x86_64"; then
    echo "fetch-qemu10.sh: $dest/bin/qemu-system-x86_64 does not report version 10:" >&2
    "$dest/bin/qemu-system-x86_64" --version >&2 || true
    exit 1
fi
log "$("$dest/bin/qemu-system-x86_64" --version | head -n1)"
echo "QEMU10=$dest/bin/qemu-system-x86_64"
