#!/usr/bin/env bash
# Runs every test of snapnet: unit tests, integration tests against the real
# daemon driven by the Rust vhost-user frontend, a short run of every fuzz
# target, then the VM tests (real QEMU guests through snapnet). Installs what
# it needs first. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
# systemd: systemd-socket-activate and systemd-analyze for tests/systemd.rs
# (installing the package does not make it init).
bash scripts/install-prereqs.sh protobuf-compiler build-essential pkg-config iproute2 iputils-ping ethtool clang libbpf-dev systemd etcd-server etcd-client
export RUST_BACKTRACE=1
# The tests need the release profile's optimisation, not its link-time
# optimisation or debug info: without them each of the ~25 test binaries
# links minutes faster in all. (Benchmarks build their own release binaries.)
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=0
# A few reserved hugetlb pages, so that the frame pool's hugetlb path runs in
# the tests too (daemons that find none left fall back to shared 4 KiB or
# transparent huge pages, which the tests cover as well). Given back at exit.
HUGEPAGES=/proc/sys/vm/nr_hugepages
hugepages_before=$(cat "$HUGEPAGES")
echo $((hugepages_before + 64)) > "$HUGEPAGES" || echo "could not reserve hugetlb pages; the hugetlb pool test checks the refusal instead"
trap 'echo "$hugepages_before" > "$HUGEPAGES" 2>/dev/null || true' EXIT
echo "== a second snapnet with another version string (the upgrade test moves between the two)"
# Only the snapnet crate rebuilds (the version is its one build-time input);
# the test build below rebuilds it once more without it.
SNAPNET_VERSION=0.1.0-next cargo build --release --bin snapnet
cp target/release/snapnet target/snapnet-next
export SNAPNET_NEXT_BINARY=$PWD/target/snapnet-next
echo "== unit and integration tests"
cargo test --release --all-targets -- --test-threads=2
echo "== Debian package (build, dpkg -i, check, remove)"
bash packaging/deb/test.sh
echo "== fuzz smoke (every fuzz target for a few seconds, docs/fuzzing.md)"
bash scripts/fuzz-smoke.sh "${SNAPNET_FUZZ_SECONDS:-5}"
if [ -n "${SNAPNET_SKIP_VM_TESTS:-}" ]; then
    echo "== VM tests skipped (SNAPNET_SKIP_VM_TESTS is set)"
else
    echo "== VM tests (QEMU guests through snapnet)"
    bash vm-tests/run-all.sh
fi
echo "== all tests passed"
