#!/usr/bin/env bash
# Run every shipped non-validation scenario and the load-vs-k sweep of the lapsbench checkout REPO into OUT,
# so that two checkouts' results can be compared file by file (the refactoring rule of issue #17: every
# requests.parquet and engine_stats.parquet byte-identical). Usage:
#   scripts/byte_identity.sh REPO OUT        # e.g. a `git worktree` of the commit before, then of the one after
#   scripts/byte_identity.sh --compare OUT_A OUT_B
# Runs from a scratch folder with REPO first on PYTHONPATH, under a fresh numba cache.
set -euo pipefail
if [ "${1:-}" = "--compare" ]; then
    a=$2; b=$3; n=0; bad=0
    while IFS= read -r f; do
        n=$((n + 1))
        cmp -s "$a/$f" "$b/$f" || { echo "differs: $f"; bad=$((bad + 1)); }
    done < <(cd "$a" && find . -name requests.parquet -o -name engine_stats.parquet | sort)
    echo "$n files compared, $bad differ"
    [ "$bad" -eq 0 ]
    exit
fi
repo=$(cd "$1" && pwd); out=$(mkdir -p "$2" && cd "$2" && pwd)
scratch=$(mktemp -d); cd "$scratch"
export PYTHONPATH="$repo" NUMBA_CACHE_DIR="$scratch/numba"
for f in "$repo"/scenarios/*.toml "$repo"/scenarios/papers/*.toml "$repo"/scenarios/vllm/*.toml; do
    name=$(basename "$f" .toml)
    python -m lapsbench run "$f" --out "$out/$name" --quiet > /dev/null
done
python -m lapsbench sweep "$repo/scenarios/sweeps/load-vs-k.toml" --out "$out/sweep-load-vs-k" --workers 1 --quiet \
    --no-plots > /dev/null
rm -rf "$scratch"
