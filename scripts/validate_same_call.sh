#!/usr/bin/env bash
# The CPU half of scripts/gpu_same_call.sh, for each validation replay:
#   scripts/validate_same_call.sh CALIB_REPLAY VALIDATION_REPLAY NAME OUT_DIR
# fits a profile from the calibration replay's step log (OUT_DIR/profile.toml, the fit of docs/validation.md),
# simulates scenarios/validation/NAME.toml with it (same scenario, seed and draws as the replay; only the
# profile pricing the steps differs: the schedulers estimate with the replay's own, VALIDATION_REPLAY/
# scheduler_profile.toml, or $SCHEDULER_PROFILE for replays older than that file) into OUT_DIR/sim, and
# compares (lapsbench validate) into OUT_DIR/compare.
# PREFILL_BUCKET (default 64, the replay's prefill padding) is passed to calibrate fit as --prefill-bucket; 0
# fits without the per-length correction (docs/validation.md §0.9 and earlier).
# Run from the repository root with lapsbench importable (PYTHONPATH=$PWD or installed).
set -eu
if (( $# != 4 )); then
  echo "usage: scripts/validate_same_call.sh CALIB_REPLAY VALIDATION_REPLAY NAME OUT_DIR" >&2
  exit 2
fi
calib=$1
real=$2
name=$3
out=$4
for f in "$calib/steps.parquet" "$real/requests.parquet" "scenarios/validation/$name.toml"; do
  if [[ ! -f $f ]]; then
    echo "scripts/validate_same_call.sh: $f: no such file" >&2
    exit 2
  fi
done
# the schedulers estimate with what the replay's schedulers used (its scheduler_profile.toml), not the new fit
believed=${SCHEDULER_PROFILE:-$real/scheduler_profile.toml}
if [[ ! -f $believed ]]; then
  echo "scripts/validate_same_call.sh: $believed: no such file; expected the replay's scheduler_profile.toml" \
    "or SCHEDULER_PROFILE=the profile its schedulers estimated with" >&2
  exit 2
fi
believed=$(cd "$(dirname "$believed")" && pwd)/$(basename "$believed")
mkdir -p "$out"
profile=$(cd "$out" && pwd)/profile.toml
python -m lapsbench calibrate fit --steps "$calib/steps.parquet" --out "$profile" \
  --target llama3-8b --draft llama-68m --batch-sizes 1,2,4,8,16,32,64 --span-multiple 256 \
  --prefill-bucket "${PREFILL_BUCKET:-64}"
python -m lapsbench run "scenarios/validation/$name.toml" --set "model.profile=\"$profile\"" \
  --set "model.scheduler_profile=\"$believed\"" --out "$out/sim" --quiet
python -m lapsbench validate "$real" "$out/sim" --out "$out/compare"
