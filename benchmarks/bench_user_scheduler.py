"""A user scheduler (examples/schedulers/shortest_predicted.py) against the built-in `srpt` on a 10^5-request
batch-1 replay (bench_engine.py's workload: Azure-conv lengths, Poisson at load ρ = 0.8, h100-llama2-7b,
k = 4, α = 0.7). Prints each scheduler's median run time after a warm-up (and how much of it is the
scheduler's `pack`) and their ratio (target <= 1.5); then starts a second process that runs the user
scheduler once: its time, and the numba cache hits and misses of the generated engine loop (a miss = a
compilation; none expected).

    python benchmarks/bench_user_scheduler.py --requests 100000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_engine import workload  # noqa: E402

from lapsbench.engine.context import RunContext  # noqa: E402
from lapsbench.engine.state import EngineState  # noqa: E402
from lapsbench.engine.steptable import build_step_table  # noqa: E402
from lapsbench.models import rng  # noqa: E402
from lapsbench.models.acceptance import FixedAcceptance  # noqa: E402
from lapsbench.models.cost import load_profile_file  # noqa: E402
from lapsbench.run.runner import serve  # noqa: E402
from lapsbench.schedulers import make_policy  # noqa: E402

USER = f"{REPO / 'examples' / 'schedulers' / 'shortest_predicted.py'}:ShortestPredicted"


def setup(n: int):
    cost = load_profile_file(REPO / "profiles" / "h100-llama2-7b.toml")
    ids, arrival, prompt, output, _, _ = workload(n, 0.8, 4, 0.7, cost)
    acceptance = FixedAcceptance(np.full(n, 0.7), ids, 4, rng.stream_key(0, 0, rng.Streams.ACCEPTANCE))
    table = build_step_table(ids, prompt, output, 4, cost, acceptance)
    table.cum_ns  # noqa: B018  (priced on first use)

    def run(name: str, params: dict | None = None) -> tuple[float, float]:
        """(seconds of the whole replay, of which the scheduler's pack)."""
        state = EngineState(ids, arrival, prompt, output, 4, cost, acceptance=acceptance)
        policy = make_policy(name, params)
        start = time.perf_counter()
        serve(state, policy, RunContext(4, cost, table, None, acceptance))
        took = time.perf_counter() - start
        start = time.perf_counter()
        policy.pack(state)
        return took, time.perf_counter() - start
    return run


def engine_loop_stats() -> str:
    """Cache hits and misses of every compiled engine loop of the generated modules loaded here."""
    hits = misses = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("lapsbench_gen_") and hasattr(module, "run_batch1"):
            stats = module._run.stats
            hits += sum(stats.cache_hits.values())
            misses += sum(stats.cache_misses.values())
    return f"numba cache hits {hits}, misses {misses}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--second-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    run = setup(args.requests)
    if args.second_process:
        builtin, took = run("srpt")[0], run(USER)[0]
        print(f"second process, first call: srpt {builtin:.2f} s, shortest-predicted {took:.2f} s; generated "
              f"engine loop: {engine_loop_stats()}")
        return
    cases = {"srpt": ("srpt", None), "shortest-predicted, median_error 0 (srpt's schedule)": (USER, {
        "median_error": 0.0}), "shortest-predicted, median_error 0.25": (USER, None)}
    for name, params in cases.values():
        run(name, params)  # warm-up: compiles (or loads from numba's cache)
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in cases}
    for _ in range(args.repeats):  # interleaved, so that a change in the machine's load hits every case alike
        for label, (name, params) in cases.items():
            runs[label].append(run(name, params))
    srpt = statistics.median(t for t, _ in runs["srpt"])
    for label, got in runs.items():
        times = [t for t, _ in got]
        median = statistics.median(times)
        print(f"{label:>52}: median {median:.3f} s over {args.repeats} runs "
              f"({', '.join(f'{t:.3f}' for t in times)}; pack {statistics.median(p for _, p in got):.3f} s); "
              f"/ srpt {median / srpt:.2f}")
    print("target: a user scheduler <= 1.5 x srpt")
    subprocess.run([sys.executable, __file__, "--requests", str(args.requests), "--second-process"], check=True)


if __name__ == "__main__":
    main()
