#!/usr/bin/env bash
# Prints, for each room (top-level module of src/), the other rooms it
# imports from (`crate::<room>` uses outside #[cfg(test)] files), with
# counts: the picture in docs/architecture.md. Exits 1 if two rooms import
# each other.
set -euo pipefail
cd "$(dirname "$0")/../src"
rooms=$(find . -mindepth 1 -maxdepth 1 -type d ! -name bin -printf '%f\n' | sort)
declare -A uses
for r in $rooms; do
    deps=$({ grep -rhoE "crate::[a-z_]+" --include='*.rs' --exclude='*tests.rs' "$r" || true; } |
        sed 's/crate:://' | sort | uniq -c | sort -rn | awk -v r="$r" '$2 != r {printf "%s(%d) ", $2, $1}')
    uses[$r]=$deps
    echo "$r -> ${deps:-(nothing)}"
done
cycle=0
for a in $rooms; do
    for b in $rooms; do
        [[ "$a" < "$b" ]] || continue
        if [[ " ${uses[$a]}" == *" $b("* ]] && [[ " ${uses[$b]}" == *" $a("* ]]; then
            echo "cycle: $a <-> $b"
            cycle=1
        fi
    done
done
exit $cycle
