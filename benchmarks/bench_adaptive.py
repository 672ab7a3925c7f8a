"""Adaptive speculation speed: one fcfs replication of scenarios/azure-conv-load.toml at 3x its rate, k = 6, under
`[speculation] adaptive = {kind = "goodput", k_max = 6}` (one K per step) and with `per_request = true` (the
per-request K chooser, which prices up to k_max x n candidates a step). Prints the first run (it loads or
compiles the engine: "warm-up") and the median of --repeats runs after it, through `run_scenario` (step table
included).

    python benchmarks/bench_adaptive.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lapsbench.config.scenario import load_scenario  # noqa: E402
from lapsbench.run.runner import run_scenario  # noqa: E402

KINDS = {"goodput": '{kind = "goodput", k_max = 6}',
         "goodput-per-request": '{kind = "goodput", k_max = 6, per_request = true}'}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for kind, table in KINDS.items():
        scenario = load_scenario(REPO / "scenarios" / "azure-conv-load.toml",
                                 ["trace.rate_scale=3", "replications=1", "speculation.k=6",
                                  f"speculation.adaptive={table}"])
        scenario = dataclasses.replace(scenario, scheduler=tuple(s for s in scenario.scheduler if s.name == "fcfs"))
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            run_scenario(scenario)
            times.append(time.perf_counter() - start)
        print(f"{kind:>20}: warm-up {times[0]:6.2f} s, median {statistics.median(times[1:]):.3f} s "
              f"({', '.join(f'{t:.3f}' for t in times[1:])})", flush=True)


if __name__ == "__main__":
    main()
