#!/usr/bin/env bash
# Validation calibrated on the same machine, in ONE device call:
#   scripts/gpu_same_call.sh OUT_DIR CALIB NAME [NAME ...]
# replays the calibration window scenarios/validation/CALIB.toml and then each validation scenario
# scenarios/validation/NAME.toml into OUT_DIR/CALIB and OUT_DIR/NAME (scripts/gpu_validation.sh; packed into
# $PACK, default OUT_DIR.tar.gz, after each). Then, on any machine, for each NAME:
# scripts/validate_same_call.sh OUT_DIR/CALIB OUT_DIR/NAME NAME RESULT_DIR.
# Run from the repository root with torch and CUDA. Without polars, the wheels carried in .gpu/slim (made by
# scripts/slim_polars.sh; the plain wheels in .gpu/whl no longer fit the device's 64 MiB tree limit) or else in
# .gpu/whl are unpacked into /tmp/site and put on PYTHONPATH.
# PIN=auto first times the replay's decode step on every CPU (scripts/host_overhead.py, ~1 min, into
# OUT_DIR/host_overhead.csv) and pins every replay to the CPU with the lowest median host time (--cpu);
# PIN=N pins them to CPU N; unset, the OS places them. $REPLAY_ARGS (e.g. --eager-prefill) is passed on to every
# replay, with --cpu appended.
set -u
if (( $# < 3 )); then
  echo "usage: scripts/gpu_same_call.sh OUT_DIR CALIB NAME [NAME ...]" >&2
  exit 2
fi
out=$1
calib=$2
shift 2
for s in "$calib" "$@"; do
  if [[ ! -f scenarios/validation/$s.toml ]]; then
    echo "scripts/gpu_same_call.sh: scenarios/validation/$s.toml: no such scenario" >&2
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
mkdir -p "$out"
pin=${PIN:-}
if [[ $pin == auto ]]; then
  python3 scripts/host_overhead.py --out "$out/host_overhead.csv" | tee "$out/host_overhead.log"
  pin=$(python3 -c "import csv, sys; rows = [r for r in csv.DictReader(open(sys.argv[1])) if r['cpus'] != 'all']
print(min(rows, key=lambda r: float(r['host_ms_median']))['cpus'])" "$out/host_overhead.csv")
  echo "pinned to CPU $pin" | tee -a "$out/host_overhead.log"
fi
export REPLAY_ARGS="${REPLAY_ARGS:-}${pin:+ --cpu $pin}"
# a large budget: every replay runs (the device call's own limit is the real bound)
"$(dirname "$0")/gpu_validation.sh" "$out" 100000 "$calib" "$@"
