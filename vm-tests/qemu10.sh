#!/usr/bin/env bash
# The two-guest scenario with QEMU 10 (bookworm-backports, downloaded and
# unpacked by qemu-scripts/fetch-qemu10.sh, not installed).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(bash "$root/qemu-scripts/fetch-qemu10.sh") || { echo "FAIL qemu10 (0 s) cannot fetch QEMU 10"; exit 1; }
eval "$(echo "$out" | grep -E '^QEMU10=')"
VM_QEMU=$QEMU10 VM_SCENARIO=qemu10 exec bash "$root/vm-tests/two-guests.sh"
