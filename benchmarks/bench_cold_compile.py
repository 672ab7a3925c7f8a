"""Cold-cache compile cost of the engines: `lapsbench run` of a tiny continuous-batching scenario (the shipped
azure-conv-continuous, its first 200 requests) for one scheduler after another, each a new process sharing one
fresh numba cache directory. The first run compiles what every scheduler shares (pricing, admission, the
step phases) and its scheduler's own loop; each later run only its scheduler's loop (then, run again, it
loads: the warm figure). Prints each run's wall time.

    python benchmarks/bench_cold_compile.py [--schedulers fcfs,las,sjf,laps-sd] [--batching continuous|none]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(scheduler: str, batching: str, cache: str, out: str) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "lapsbench", "run", str(REPO / "scenarios/azure-conv-continuous.toml"), "--quiet",
           "--out", out, "--set", "trace.max_requests=200", "--set", "replications=1",
           "--set", f"engine.batching=\"{batching}\"", "--schedulers", scheduler]
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedulers", default="fcfs,las,sjf,laps-sd")
    parser.add_argument("--batching", default="continuous", choices=("continuous", "none"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        for i, name in enumerate(args.schedulers.split(",")):
            cold = run(name, args.batching, cache, f"{out}/{i}")
            warm = run(name, args.batching, cache, f"{out}/{i}w")
            print(f"{name:>10}: cold {cold:6.1f} s, warm {warm:5.1f} s", flush=True)


if __name__ == "__main__":
    main()
