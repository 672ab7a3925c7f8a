#!/usr/bin/env bash
# Batch-1 validation calibrated on the same machine, in ONE device call:
#   scripts/gpu_b1_same_lease.sh OUT_DIR NAME [CALIB]
# replays the calibration window scenarios/validation/CALIB.toml (default calib-b1-lease: trace minute 40+,
# fcfs, ~90 s) and then the batch-1 validation scenario scenarios/validation/NAME.toml (minute 10+) into
# OUT_DIR/CALIB and OUT_DIR/NAME (scripts/gpu_validation.sh; packed into $PACK, default OUT_DIR.tar.gz, after
# each). Then, on any machine: scripts/validate_b1_same_lease.sh OUT_DIR/CALIB OUT_DIR/NAME NAME RESULT_DIR.
# Run from the repository root with torch and CUDA. Without polars, the wheels carried in .gpu/slim (made by
# scripts/slim_polars.sh; the plain wheels in .gpu/whl no longer fit the device's 64 MiB tree limit) or else in
# .gpu/whl are unpacked into /tmp/site and put on PYTHONPATH.
set -u
if (( $# < 2 )); then
  echo "usage: scripts/gpu_b1_same_lease.sh OUT_DIR NAME [CALIB]" >&2
  exit 2
fi
out=$1
name=$2
calib=${3:-calib-b1-lease}
for s in "$calib" "$name"; do
  if [[ ! -f scenarios/validation/$s.toml ]]; then
    echo "scripts/gpu_b1_same_lease.sh: scenarios/validation/$s.toml: no such scenario" >&2
    exit 2
  fi
done
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import polars" 2>/dev/null; then
  mkdir -p /tmp/site
  if [[ -f .gpu/slim/rt.xz ]]; then
    tar xf .gpu/slim/rest.tar -C /tmp/site
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
      .gpu/slim/rt.xz "/tmp/site/$(cat .gpu/slim/rt.path)"
  fi
  for w in .gpu/slim/*.whl .gpu/whl/*.whl; do
    [[ -f $w ]] && python3 -m zipfile -e "$w" /tmp/site
  done
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
# a large budget: both replays run (the device call's own limit is the real bound)
"$(dirname "$0")/gpu_validation.sh" "$out" 100000 "$calib" "$name"
