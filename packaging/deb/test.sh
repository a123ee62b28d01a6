#!/usr/bin/env bash
# Builds the Debian package, installs it with dpkg, checks what it installed
# (`snapnet --version`, `man -w snapnet`, the units with systemd-analyze, the
# conffile, the completions), and removes it again, also on failure. Runs
# as root (test-all.sh runs it); refuses to touch a snapnet already
# installed from elsewhere.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fail() { echo "FAIL deb: $*"; exit 1; }
if dpkg-query -W -f='${Status}' snapnet 2>/dev/null | grep -q "install ok installed"; then
    fail "a snapnet package is already installed; remove it first (dpkg -r snapnet)"
fi
bash "$root/scripts/install-prereqs.sh" man-db systemd dpkg-dev protobuf-compiler
deb=$(bash "$root/packaging/deb/build.sh" | tail -1)
[ -f "$deb" ] || fail "build.sh printed no package"
trap 'dpkg --purge snapnet >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb" >/dev/null || fail "dpkg -i $deb"
version=$(/usr/bin/snapnet --version) || fail "/usr/bin/snapnet --version"
expected=$("$root/target/release/snapnet" --version)
[ "$version" = "$expected" ] || fail "installed '$version', built '$expected'"
man -w snapnet >/dev/null || fail "man -w snapnet finds no page"
man -w snapnet-ctl >/dev/null || fail "man -w snapnet-ctl finds no page"
[ -f /usr/share/bash-completion/completions/snapnet ] || fail "no bash completion"
cmp -s /etc/snapnet/snapnet.json <(/usr/bin/snapnet serve --print-default-config) ||
    fail "/etc/snapnet/snapnet.json is not the embedded default"
grep -qx /etc/snapnet/snapnet.json /var/lib/dpkg/info/snapnet.conffiles || fail "the config is not a conffile"
# The units as systemd reads them (it need not be init for this).
if ! out=$(systemd-analyze verify /lib/systemd/system/snapnet.service /lib/systemd/system/snapnet.socket 2>&1); then
    fail "systemd-analyze verify: $out"
fi
dpkg -r snapnet >/dev/null || fail "dpkg -r snapnet"
[ ! -e /usr/bin/snapnet ] || fail "/usr/bin/snapnet left after dpkg -r"
dpkg --purge snapnet >/dev/null || fail "dpkg --purge snapnet"
[ ! -e /etc/snapnet/snapnet.json ] || fail "the conffile left after --purge"
trap - EXIT
echo "PASS deb $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB): installed, --version '$version', man pages, units verified, removed"
