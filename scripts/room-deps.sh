#!/usr/bin/env bash
# Prints, for each room (top-level module of src/), the other rooms it
# imports from (`crate::<room>` uses outside #[cfg(test)] files), with
# counts: the picture in docs/architecture.md. Exits 1 if two rooms import
# each other, or if two sibling files of any crate in the workspace do
# (`super::<file>` or `crate::<path>::<file>` both ways; test files left out).
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
# Sibling files: a file "imports" a sibling when it names it through
# `super::` (or, from the crate root's modules, by its full `crate::` path).
cd ..
for dir in $(find src crates/*/src -type d); do
    files=$(find "$dir" -maxdepth 1 -name '*.rs' ! -name '*tests.rs' ! -name mod.rs ! -name lib.rs ! -name main.rs -printf '%f\n' | sed 's/\.rs$//' | sort)
    modpath=$(echo "$dir" | sed -E 's#^(crates/[^/]+/)?src/?##; s#/#::#g')
    for a in $files; do
        for b in $files; do
            [[ "$a" < "$b" ]] || continue
            names() { # does file $1 name sibling $2?
                grep -v '^\s*//' "$dir/$1.rs" | sed '/^#\[cfg(test)\]/,$d' |
                    grep -qE "super::$2\b|crate::${modpath:+$modpath::}$2\b"
            }
            if names "$a" "$b" && names "$b" "$a"; then
                echo "cycle: $dir/$a.rs <-> $dir/$b.rs"
                cycle=1
            fi
        done
    done
done
exit $cycle
