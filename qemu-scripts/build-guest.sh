#!/usr/bin/env bash
# Builds the snapnet test guest (kernel + initramfs) from Debian packages only.
#
# Usage: qemu-scripts/build-guest.sh [--force] [--quiet]
#   --force   rebuild the initramfs even if a cached one exists
#   --quiet   no progress messages on stderr
#
# Environment: SNAPNET_GUEST_CACHE (default /var/cache/snapnet-guest).
#
# Contents: the kernel that linux-image-amd64 depends on (apt-get download +
# dpkg -x), its uncompressed vmlinux (XZ payload of vmlinuz; Debian has
# CONFIG_PVH=y so `qemu -kernel vmlinux` boots it directly), the virtio-net
# modules and their dependencies (modprobe --show-depends after depmod -b),
# busybox-static with applet symlinks, iperf3, iputils ping and ethtool with
# their shared libraries (ldd), and qemu-scripts/guest-init.sh as /init.
#
# Output (stdout, for `eval "$(qemu-scripts/build-guest.sh)"`):
#   GUEST_KERNEL=/var/cache/snapnet-guest/guest-<key>/vmlinux
#   GUEST_INITRD=/var/cache/snapnet-guest/guest-<key>/initrd.img
# The cache key is the kernel package and version plus a hash of guest-init.sh,
# of this script and of the versions of the userland packages, so a second run
# only checks that the files exist.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${SNAPNET_GUEST_CACHE:-/var/cache/snapnet-guest}
init_src="$here/guest-init.sh"
force=0
quiet=0
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --quiet) quiet=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "build-guest.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

log() { [ "$quiet" = 1 ] || echo "build-guest: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "build-guest.sh: run as root (apt-get, depmod into the cache)" >&2
    exit 1
fi
[ -f "$init_src" ] || { echo "build-guest.sh: missing $init_src" >&2; exit 1; }

# Host tools: extraction/packing tools and the Debian packages whose binaries
# go into the guest (the binaries and their libraries are copied from the
# installed packages).
tools=(cpio xz-utils kmod gzip busybox-static iperf3 iputils-ping ethtool)
bash "$(dirname "$0")/../scripts/install-prereqs.sh" "${tools[@]}" >&2

# The kernel package linux-image-amd64 points to, and its version. apt-cache
# takes ~1 s, so the answer is remembered until the apt lists change.
resolved="$cache/kernel-package"
kpkg="" kpkgver=""
if [ -s "$resolved" ] && [ "$resolved" -nt /var/lib/apt/lists ]; then
    read -r kpkg kpkgver <"$resolved" || true
fi
if [ -z "$kpkg" ] || [ -z "$kpkgver" ]; then
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    if [ -z "$kpkg" ]; then
        apt-get update -qq >&2
        kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
    [ -n "$kpkg" ] || { echo "build-guest.sh: cannot resolve linux-image-amd64" >&2; exit 1; }
    kpkgver=$(apt-cache show --no-all-versions "$kpkg" | awk '/^Version:/ {print $2; exit}')
    mkdir -p "$cache"
    echo "$kpkg $kpkgver" >"$resolved"
fi
kver=${kpkg#linux-image-}                      # e.g. 6.1.0-56-amd64 (uname -r)

userland=$(dpkg-query -W -f='${Package}=${Version}\n' busybox-static iperf3 libiperf0 iputils-ping ethtool 2>/dev/null | tr '\n' ' ')
hash=$( { cat "$init_src" "${BASH_SOURCE[0]}"; echo "$userland"; } | sha256sum | cut -c1-12)
kdir="$cache/kernel-${kpkg}_${kpkgver}"
out="$cache/guest-${kpkgver}-${hash}"

print_paths() {
    echo "GUEST_KERNEL=$out/vmlinux"
    echo "GUEST_INITRD=$out/initrd.img"
}

if [ "$force" = 0 ] && [ -s "$out/vmlinux" ] && [ -s "$out/initrd.img" ]; then
    print_paths
    exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# --- Kernel: vmlinux + the virtio-net modules, cached per kernel version. ---
if [ ! -s "$kdir/vmlinux" ] || [ ! -s "$kdir/modules.order" ]; then
    log "downloading $kpkg $kpkgver"
    (cd "$tmp" && apt-get -q -o APT::Sandbox::User=root download "$kpkg=$kpkgver" >&2)
    mkdir -p "$tmp/k"
    dpkg -x "$tmp"/"$kpkg"_*.deb "$tmp/k"
    depmod -b "$tmp/k" "$kver"
    kbuild="$tmp/kernel"
    mkdir -p "$kbuild/mods"

    # vmlinuz is a bzImage whose payload is an XZ stream holding the ELF
    # vmlinux; try each XZ magic until one decompresses to an ELF file.
    vmlinuz="$tmp/k/boot/vmlinuz-$kver"
    found=0
    while read -r off; do
        # (process substitution: tail's SIGPIPE must not fail the test)
        if xz -dc --single-stream < <(tail -c +"$((off + 1))" "$vmlinuz") >"$kbuild/vmlinux" 2>/dev/null \
            && [ "$(head -c 4 "$kbuild/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ]; then
            found=1
            break
        fi
    done < <(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1)
    [ "$found" = 1 ] || { echo "build-guest.sh: no XZ-compressed ELF in $vmlinuz" >&2; exit 1; }

    # Modules in load order (deduplicated), as modprobe would insmod them.
    : >"$kbuild/modules.order"
    for m in virtio_pci virtio_net; do
        modprobe -d "$tmp/k" -S "$kver" --show-depends "$m"
    done | while read -r kind path _; do
        [ "$kind" = insmod ] || continue         # "builtin X" needs no file
        name=$(basename "$path")
        name=${name%.xz}; name=${name%.zst}; name=${name%.gz}
        grep -qx "$name" "$kbuild/modules.order" && continue
        case "$path" in
            *.xz) xz -dc "$path" >"$kbuild/mods/$name" ;;
            *.zst) zstd -dcq "$path" >"$kbuild/mods/$name" ;;
            *.gz) gzip -dc "$path" >"$kbuild/mods/$name" ;;
            *) cp "$path" "$kbuild/mods/$name" ;;
        esac
        echo "$name" >>"$kbuild/modules.order"
    done
    [ -s "$kbuild/modules.order" ] || { echo "build-guest.sh: no modules found" >&2; exit 1; }
    echo "$kver" >"$kbuild/kver"
    rm -rf "$kdir"
    mv "$kbuild" "$kdir"
    rm -rf "$tmp/k" "$tmp"/*.deb
    log "kernel $kver: vmlinux $(du -h "$kdir/vmlinux" | cut -f1), modules: $(tr '\n' ' ' <"$kdir/modules.order")"
fi

# --- Initramfs. ---
log "building initramfs"
r="$tmp/root"
mkdir -p "$r"/{bin,dev,proc,sys,tmp,run,etc,lib/modules,lib/x86_64-linux-gnu,lib64,usr}
ln -s ../bin "$r/sbin"
ln -s ../bin "$r/usr/bin"
ln -s ../bin "$r/usr/sbin"
ln -s ../lib "$r/usr/lib"

cp /bin/busybox "$r/bin/busybox"
for applet in $(/bin/busybox --list); do
    # An applet named `busybox` would make /bin/busybox a symlink loop
    # (the kernel's init fails with -40, ELOOP).
    [ "$applet" = busybox ] && continue
    ln -sf busybox "$r/bin/$applet"
done

copy_with_libs() {
    local bin=$1 dest lib
    dest="$r/bin/$(basename "$bin")"
    rm -f "$dest"                                # replaces a busybox applet
    cp -L "$bin" "$dest"
    for lib in $(ldd "$bin" | awk '/=>/ {print $3} !/=>/ && $1 ~ /^\// {print $1}'); do
        [ -e "$r$lib" ] && continue
        mkdir -p "$r$(dirname "$lib")"
        cp -L "$lib" "$r$lib"
    done
}
copy_with_libs /usr/bin/iperf3
copy_with_libs /usr/bin/ping
copy_with_libs /usr/sbin/ethtool

cp "$kdir/mods/"*.ko "$r/lib/modules/"
cp "$kdir/modules.order" "$r/lib/modules/load-order"
cp "$kdir/kver" "$r/etc/kver"
install -m 0755 "$init_src" "$r/init"
echo 'root:x:0:0:root:/:/bin/sh' >"$r/etc/passwd"
echo 'root:x:0:' >"$r/etc/group"
printf '127.0.0.1 localhost\n' >"$r/etc/hosts"

mkdir -p "$tmp/out"
(cd "$r" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) \
    | gzip -6 -n >"$tmp/out/initrd.img"
ln "$kdir/vmlinux" "$tmp/out/vmlinux" 2>/dev/null || cp "$kdir/vmlinux" "$tmp/out/vmlinux"
rm -rf "$out"
mv "$tmp/out" "$out"
log "initrd $(du -h "$out/initrd.img" | cut -f1) at $out"

# Keep only the newest few guest builds.
find "$cache" -maxdepth 1 -name 'guest-*' -printf '%T@ %p\n' | sort -rn | tail -n +4 \
    | while read -r _ old; do rm -rf "$old"; done

print_paths
