#!/usr/bin/env bash
# snapnet's main job, shown end to end on a fresh Debian 12 machine (as root):
# builds snapnet and a test guest (from Debian packages), runs `snapnet serve`
# on the embedded default (vnic0 and vnic1 on /run/snapnet), boots two QEMU
# guests on them, shows them pinging each other and an iperf3 TCP run between
# them, prints snapnet's per-vNIC and per-port counters, and cleans up every
# process and file it made. Options are those of qemu-scripts/pair-test.sh
# (e.g. --qemu for another QEMU, --queues 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-prereqs.sh protobuf-compiler build-essential pkg-config qemu-system-x86 ca-certificates
if [ -S /run/snapnet/vnic0.sock ] && pgrep -x snapnet >/dev/null; then
    echo "demo: a snapnet is already serving /run/snapnet; stop it first" >&2
    exit 1
fi
cargo build --release --bin snapnet
exec bash qemu-scripts/pair-test.sh "$@"
