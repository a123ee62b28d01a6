#!/usr/bin/env bash
# Runs every VM scenario; each prints one PASS/FAIL line. Exits non-zero if
# any failed. A missing prerequisite is a failure, not a skip.
set -uo pipefail
cd "$(dirname "$0")"
bash ../scripts/install-prereqs.sh qemu-system-x86 busybox-static iperf3 cpio xz-utils kmod iputils-ping ethtool dpdk-dev socat \
    libvirt-daemon-system libvirt-clients etcd-server etcd-client
failed=0
for t in two-guests qemu10 multiqueue mtu qemu-restart snapnet-restart upgrade uplink overlay directory packed packed-dpdk migration migration-failures migration-overlay libvirt; do
    if ! bash "./$t.sh"; then failed=$((failed + 1)); fi
done
echo "vm-tests: $failed failed"
[ "$failed" -eq 0 ]
