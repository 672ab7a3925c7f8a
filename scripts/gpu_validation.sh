#!/usr/bin/env bash
# Replay validation scenarios on a GPU: scripts/gpu_validation.sh OUT_DIR BUDGET_S NAME [NAME ...]
# Each scenarios/validation/NAME.toml is replayed (`lapsbench replay`, torch executor) into OUT_DIR/NAME; a
# scenario is started only while less than BUDGET_S seconds have passed (the rest are listed in
# OUT_DIR/skipped.txt). After each, OUT_DIR is packed into $PACK (default OUT_DIR.tar.gz), so a cut-off run keeps
# what finished.
# $REPLAY_ARGS (e.g. "--cpu 3") is passed on to every `lapsbench replay`.
# Run from the repository root with lapsbench importable and torch with CUDA installed (the `gpu` extra).
set -u
out=$1
budget=$2
shift 2
mkdir -p "$out"
pack=${PACK:-$out.tar.gz}
start=$(date +%s)
for name in "$@"; do
  if (( $(date +%s) - start > budget )); then
    echo "skipped $name (past ${budget}s)"
    echo "$name" >> "$out/skipped.txt"
    continue
  fi
  t0=$(date +%s)
  # shellcheck disable=SC2086  # REPLAY_ARGS is a list of words
  python3 -m lapsbench replay "scenarios/validation/$name.toml" --out "$out/$name" --quiet ${REPLAY_ARGS:-} 2>&1 \
    | tee "$out/$name.log"
  echo "$name: $(( $(date +%s) - t0 ))s" | tee -a "$out/times.txt"
  tar czf "$pack" -C "$(dirname "$out")" "$(basename "$out")"
done
