#!/usr/bin/env bash
# Batch-1 validation calibrated on the same machine, in ONE device call (scripts/gpu_same_call.sh):
#   scripts/gpu_b1_same_lease.sh OUT_DIR NAME [CALIB]
# replays the calibration window scenarios/validation/CALIB.toml (default calib-b1-lease: trace minute 40+,
# fcfs, ~90 s) and then the batch-1 validation scenario scenarios/validation/NAME.toml (minute 10+) into
# OUT_DIR/CALIB and OUT_DIR/NAME (scripts/gpu_validation.sh; packed into $PACK, default OUT_DIR.tar.gz, after
# each). Then, on any machine: scripts/validate_b1_same_lease.sh OUT_DIR/CALIB OUT_DIR/NAME NAME RESULT_DIR.
# PIN and $REPLAY_ARGS: as for scripts/gpu_same_call.sh.
set -u
if (( $# < 2 )); then
  echo "usage: scripts/gpu_b1_same_lease.sh OUT_DIR NAME [CALIB]" >&2
  exit 2
fi
exec "$(dirname "$0")/gpu_same_call.sh" "$1" "${3:-calib-b1-lease}" "$2"
