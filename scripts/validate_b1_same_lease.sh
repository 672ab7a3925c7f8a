#!/usr/bin/env bash
# The CPU half of scripts/gpu_b1_same_lease.sh:
#   scripts/validate_b1_same_lease.sh CALIB_REPLAY VALIDATION_REPLAY NAME OUT_DIR
# fits a profile from the calibration replay's step log (OUT_DIR/profile.toml, the fit of docs/validation.md),
# simulates scenarios/validation/NAME.toml with it (same scenario, seed and draws as the replay; only the
# profile differs) into OUT_DIR/sim, and compares (lapsbench validate) into OUT_DIR/compare.
# Run from the repository root with lapsbench importable (PYTHONPATH=$PWD or installed).
set -eu
if (( $# != 4 )); then
  echo "usage: scripts/validate_b1_same_lease.sh CALIB_REPLAY VALIDATION_REPLAY NAME OUT_DIR" >&2
  exit 2
fi
calib=$1
real=$2
name=$3
out=$4
for f in "$calib/steps.parquet" "$real/requests.parquet" "scenarios/validation/$name.toml"; do
  if [[ ! -f $f ]]; then
    echo "scripts/validate_b1_same_lease.sh: $f: no such file" >&2
    exit 2
  fi
done
mkdir -p "$out"
profile=$(cd "$out" && pwd)/profile.toml
python -m lapsbench calibrate fit --steps "$calib/steps.parquet" --out "$profile" \
  --target llama3-8b --draft llama-68m --batch-sizes 1,2,4,8,16,32,64 --span-multiple 256
python -m lapsbench run "scenarios/validation/$name.toml" --set "model.profile=\"$profile\"" \
  --out "$out/sim" --quiet
python -m lapsbench validate "$real" "$out/sim" --out "$out/compare"
