"""Runs one lapsbench scenario in-process and times its phases, as vidur_driver.py does for Vidur;
executed by bench_vs_vidur.py.

    python benchmarks/lapsbench_driver.py SCENARIO.toml --out DIR --timings OUT.json [--warm 2]

Phases written to the timings JSON (seconds, `time.perf_counter`):
  import_s   importing lapsbench's scenario loader, runner and report writer (numpy, polars, numba);
  first_s    the first `run_scenario` in the process: everything `lapsbench run` simulates (trace load,
             workload, acceptance, step table, engine, per-request records) plus loading the compiled
             engine from numba's on-disk cache (and numba's own target set-up), a one-off per process;
  run_s      the median of `--warm` further `run_scenario` calls on the same scenario: the simulation
             itself, trace loading included (Vidur's counterpart is its event loop, run_s);
  write_s    writing the results directory (requests.parquet, summary.csv, meta.json), as `lapsbench run`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="results directory")
    ap.add_argument("--timings", type=Path, required=True, help="where to write the phase timings (JSON)")
    ap.add_argument("--warm", type=int, default=2, help="run_scenario calls after the first (median: run_s)")
    a = ap.parse_args()

    t0 = time.perf_counter()
    import dataclasses

    from lapsbench.config.scenario import load_scenario
    from lapsbench.results.writer import command_line
    from lapsbench.run.output import write_results
    from lapsbench.run.runner import run_scenario
    import_s = time.perf_counter() - t0

    spec = load_scenario(a.scenario)
    spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, dir=str(a.out)))
    t1 = time.perf_counter()
    result = run_scenario(spec)
    first_s = time.perf_counter() - t1
    warm = []
    for _ in range(max(1, a.warm)):
        t2 = time.perf_counter()
        again = run_scenario(spec)
        warm.append(time.perf_counter() - t2)
        if not again.requests.equals(result.requests):
            raise SystemExit("lapsbench_driver: a second run_scenario gave other per-request results")
    t3 = time.perf_counter()
    write_results(spec.out_dir, spec, result, command_line())
    write_s = time.perf_counter() - t3
    a.timings.write_text(json.dumps({
        "import_s": import_s, "first_s": first_s, "run_s": statistics.median(warm), "warm_runs_s": warm,
        "write_s": write_s, "requests": int(result.workload.n)}))


if __name__ == "__main__":
    main()
