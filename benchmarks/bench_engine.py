"""Simulated requests per second of the batch-1 engine on a synthetic trace with Azure-conv-like lengths.

Lengths are resampled from traces/azure_conv_2023.parquet; arrivals are Poisson at the rate that gives the
requested load ρ on the H100-like Llama-2-7B profile with k = 4 and α = 0.7. Prints, per policy, the
median wall time of `--repeats` runs and simulated requests per second, plus peak RSS.

    python benchmarks/bench_engine.py --requests 100000 --policies fcfs,las
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lapsbench.engine.context import RunContext  # noqa: E402
from lapsbench.engine.state import EngineState  # noqa: E402
from lapsbench.engine.steptable import build_step_table  # noqa: E402
from lapsbench.models import rng  # noqa: E402
from lapsbench.models.acceptance import FixedAcceptance  # noqa: E402
from lapsbench.models.cost import load_profile_file  # noqa: E402
from lapsbench.run.runner import serve  # noqa: E402
from lapsbench.schedulers import make_policy  # noqa: E402


def workload(n: int, rho: float, k: int, alpha: float, cost, seed: int = 0):
    """Azure-conv lengths, Poisson arrivals at the rate giving load ρ (mean service from the step table)."""
    lengths = pl.read_parquet(REPO / "traces" / "azure_conv_2023.parquet", columns=["prompt_tokens",
                                                                                   "output_tokens"])
    g = np.random.default_rng(seed)
    pick = g.integers(0, lengths.height, n)
    prompt = lengths["prompt_tokens"].to_numpy()[pick].astype(np.int64)
    output = lengths["output_tokens"].to_numpy()[pick].astype(np.int64)
    ids = np.arange(n, dtype=np.int64)
    probe = min(n, 20000)
    acceptance = FixedAcceptance(np.full(probe, alpha), ids[:probe], k, rng.stream_key(99, 0, 1))
    table = build_step_table(ids[:probe], prompt[:probe], output[:probe], k, cost, acceptance)
    mean_service = float(table.service_ns().mean()) / 1e9
    rate = rho / mean_service
    arrival = np.cumsum(g.exponential(1 / rate, n))
    return ids, arrival, prompt, output, rate, mean_service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--policies", default="fcfs,las")
    parser.add_argument("--rho", type=float, default=0.8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cost = load_profile_file(REPO / "profiles" / "h100-llama2-7b.toml")
    ids, arrival, prompt, output, rate, service = workload(args.requests, args.rho, args.k, args.alpha, cost)
    print(f"{args.requests} requests, Poisson {rate:.3f} req/s, mean service {service * 1000:.1f} ms "
          f"(rho {args.rho}), k={args.k}, alpha={args.alpha}, batch 1, profile h100-llama2-7b")
    acceptance = FixedAcceptance(np.full(args.requests, args.alpha), ids, args.k,
                                 rng.stream_key(0, 0, rng.Streams.ACCEPTANCE))
    times = []
    table = None
    for _ in range(args.repeats):
        table = None  # free the previous table before building the next: peak RSS is one table
        start = time.perf_counter()
        table = build_step_table(ids, prompt, output, args.k, cost, acceptance)
        table.cum_ns  # noqa: B018  (priced on first use: batch 1 always uses it, so time it with the table)
        times.append(time.perf_counter() - start)
    table_s = statistics.median(times)
    print(f"step table (shared by every scheduler of a replication): median {table_s:.2f} s "
          f"({table.offset[-1]:,} steps)")
    for name in args.policies.split(","):
        times = []
        for _ in range(args.repeats):
            state = None  # free the previous run's state first: peak RSS is one run's
            state = EngineState(ids, arrival, prompt, output, args.k, cost, acceptance=acceptance)
            start = time.perf_counter()
            serve(state, make_policy(name), RunContext(args.k, cost, table, None, acceptance))
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(f"{name:>8}: median {median:7.2f} s over {args.repeats} runs "
              f"({', '.join(f'{t:.2f}' for t in times)}) + table {table_s:.2f} s -> "
              f"{args.requests / (median + table_s):,.0f} simulated requests/s; "
              f"mean JCT {np.mean(state.finish_s - state.arrival_s):.3f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
