#!/usr/bin/env bash
# Builds every fuzz target (fuzz/, cargo-fuzz + libFuzzer, AddressSanitizer)
# on the stable toolchain and runs each one for a few seconds from its
# committed corpus. Fails on the first crash, leak or timeout, leaving the
# input under fuzz/artifacts/<target>/. Installs cargo-fuzz when it is
# missing. Run as root (the rpc target sandboxes its daemon in namespaces).
#
#   bash scripts/fuzz-smoke.sh [SECONDS_PER_TARGET] [TARGET...]
#
# The long campaigns use the same build; see docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
shift || true
bash scripts/install-prereqs.sh build-essential protobuf-compiler
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only -Z flags (sanitizer, coverage passes);
# stable rustc accepts them when told it is building itself.
export RUSTC_BOOTSTRAP=1
cd fuzz
echo "== building fuzz targets"
cargo fuzz build
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
bin=target/x86_64-unknown-linux-gnu/release
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# Where targets put their sockets (vhost_user's listener), removed with it.
export TMPDIR="$scratch"
failed=0
passed=0
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "artifacts/$t"
    # New inputs go to the scratch corpus: the committed one stays as it is.
    if "$bin/$t" "$scratch/$t" "corpus/$t" -max_total_time="$seconds" \
        -timeout=10 -rss_limit_mb=4096 -artifact_prefix="artifacts/$t/" \
        -print_final_stats=1 >"$scratch/$t.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$scratch/$t.log")
        echo "fuzz $t: ok, $runs runs, $rate exec/s"
        passed=$((passed + 1))
    else
        echo "fuzz $t: FAILED"
        grep -E -A12 "panicked at|ERROR: |Test unit written" "$scratch/$t.log" | head -40
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
