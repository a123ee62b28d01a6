#!/usr/bin/env bash
# Builds snapnet_<version>_amd64.deb with dpkg-deb (Debian's own tool; no
# debhelper tree to keep): the release binary, the systemd units, the default
# config as a conffile, the example configs, man pages and shell completions
# (generated from the binary's own CLI definitions), README and licence.
#
# Usage: packaging/deb/build.sh [OUT_DIR]   (default: target/debian)
# Prints the .deb's path on its last line.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-$root/target/debian}
cd "$root"
cargo build --release --bin snapnet >&2
bin=target/release/snapnet
version=$("$bin" --version | sed -n 's/^snapnet \([^ ]*\) .*/\1/p')
[ -n "$version" ] || { echo "build.sh: cannot read the version from $bin --version" >&2; exit 1; }
arch=$(dpkg --print-architecture)
stage=$(mktemp -d "${TMPDIR:-/tmp}/snapnet-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg=$stage/snapnet

install -D -m 0755 "$bin" "$pkg/usr/bin/snapnet"
strip --strip-debug "$pkg/usr/bin/snapnet"
install -D -m 0644 packaging/systemd/snapnet.service "$pkg/lib/systemd/system/snapnet.service"
install -D -m 0644 packaging/systemd/snapnet.socket "$pkg/lib/systemd/system/snapnet.socket"
install -d -m 0755 "$pkg/etc/snapnet"
"$bin" serve --print-default-config >"$pkg/etc/snapnet/snapnet.json"
chmod 0644 "$pkg/etc/snapnet/snapnet.json"
doc=$pkg/usr/share/doc/snapnet
install -D -m 0644 README.md "$doc/README.md"
for f in examples/*.json; do install -D -m 0644 "$f" "$doc/examples/$(basename "$f")"; done
install -D -m 0644 docs/systemd.md "$doc/systemd.md"
cat >"$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: snapnet
Files: *
License: MIT OR Apache-2.0
COPYRIGHT

assets=$stage/assets
"$bin" generate-assets "$assets"
install -d -m 0755 "$pkg/usr/share/man/man8"
for page in "$assets"/man/*.8; do
    gzip -9n -c "$page" >"$pkg/usr/share/man/man8/$(basename "$page").gz"
done
install -D -m 0644 "$assets/completions/snapnet.bash" "$pkg/usr/share/bash-completion/completions/snapnet"
install -D -m 0644 "$assets/completions/_snapnet" "$pkg/usr/share/zsh/vendor-completions/_snapnet"
install -D -m 0644 "$assets/completions/snapnet.fish" "$pkg/usr/share/fish/vendor_completions.d/snapnet.fish"

install -d -m 0755 "$pkg/DEBIAN"
echo /etc/snapnet/snapnet.json >"$pkg/DEBIAN/conffiles"
# Installed size in KiB, as dpkg counts it.
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: snapnet
Version: $version
Architecture: $arch
Maintainer: snapnet developers <snapnet@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.36), libgcc-s1
Recommends: qemu-system-x86
Section: net
Priority: optional
Description: userspace host networking for virtual machines
 snapnet serves virtio-net devices to QEMU and cloud-hypervisor guests over
 vhost-user, runs their queues through Snap-style engine groups, and
 switches their traffic through an AF_XDP edge switch to the host NIC.
 Upgrades hand the running daemon to a new binary without the guests
 noticing; guests live-migrate between hosts.
CONTROL
# systemd as init: tell it about the units (not enabled by default: the
# config names the vNICs first). Without systemd, nothing to do.
cat >"$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
POSTINST
cat >"$pkg/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
POSTRM
cat >"$pkg/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop snapnet.service snapnet.socket || true
fi
PRERM
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/postrm" "$pkg/DEBIAN/prerm"

mkdir -p "$out"
deb=$out/snapnet_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
echo "$deb"
