#!/usr/bin/env bash
# Runs every test of snapnet: unit tests, integration tests against the real
# daemon driven by the Rust vhost-user frontend, and the CLI tests. Installs
# what it needs first. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-prereqs.sh build-essential pkg-config
export RUST_BACKTRACE=1
echo "== unit and integration tests"
cargo test --release --all-targets -- --test-threads=2
echo "== all tests passed"
