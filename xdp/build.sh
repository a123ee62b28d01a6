#!/bin/bash
# Rebuilds the committed XDP object from its source. Deterministic for a given
# clang: debug paths are made relative so the object does not depend on where
# the checkout lives. Needs clang and libbpf-dev (scripts/install-prereqs.sh).
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-snapnet_uplink.bpf.o}
clang -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu \
    -fdebug-prefix-map="$PWD"=. -fdebug-compilation-dir=. \
    -c snapnet_uplink.bpf.c -o "$out"
