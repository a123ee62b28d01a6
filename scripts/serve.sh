#!/usr/bin/env bash
# Builds snapnet and runs `snapnet serve` on the embedded default: vNICs vnic0
# and vnic1 at /run/snapnet/vnic{0,1}.sock, one dedicated engine thread.
# Extra arguments go to `snapnet serve` (e.g. --config FILE). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-prereqs.sh protobuf-compiler build-essential pkg-config
cargo build --release --bin snapnet
exec ./target/release/snapnet serve "$@"
