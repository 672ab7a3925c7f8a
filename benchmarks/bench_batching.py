"""Continuous batching speed: every registered scheduler on the shipped Azure conv trace (19,366 requests),
max_batch 64, k = 4, α = 0.7, measured H100 Llama-2-7B profile, one replication. Prints each scheduler's
wall time (median of --repeats), the total, and simulated requests per second.

As the runner does, the replication's step table is drawn once and shared by every scheduler (timed on its
own line, and counted in the total). Before the timed runs, one untimed tiny run loads the compiled engine
(numba's on-disk cache; the first run after a change to the compiled code compiles it instead): its time is
printed separately ("warm-up"). Each scheduler's time includes its policy's preparation (predictors etc.).

    python benchmarks/bench_batching.py [--requests N] [--schedulers a,b] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lapsbench.engine.context import BatchConfig, RunContext  # noqa: E402
from lapsbench.engine.state import EngineState  # noqa: E402
from lapsbench.engine.steptable import build_step_table  # noqa: E402
from lapsbench.models import rng  # noqa: E402
from lapsbench.models.acceptance import FixedAcceptance  # noqa: E402
from lapsbench.models.cost import load_profile_file  # noqa: E402
from lapsbench.run.runner import serve  # noqa: E402
from lapsbench.schedulers import make_policy, registry  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=0, help="first N requests (0 = all 19,366)")
    parser.add_argument("--schedulers", default="", help="comma-separated (default: every registered one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=64)
    args = parser.parse_args()
    trace = pl.read_parquet(REPO / "traces" / "azure_conv_2023.parquet")
    if args.requests:
        trace = trace.head(args.requests)
    ids = trace["request_id"].to_numpy()
    arrival = trace["arrival_s"].to_numpy()
    prompt = trace["prompt_tokens"].to_numpy().astype(np.int64)
    output = trace["output_tokens"].to_numpy().astype(np.int64)
    cost = load_profile_file(REPO / "profiles" / "h100-llama2-7b.toml")
    k = 4
    acceptance = FixedAcceptance(np.full(ids.size, 0.7), ids, k, rng.stream_key(0, 0, rng.Streams.ACCEPTANCE))
    config = BatchConfig(mode="continuous", max_batch=args.max_batch, max_batch_tokens=8192,
                         kv_capacity_tokens=float(cost.kv_capacity_tokens))
    names = args.schedulers.split(",") if args.schedulers else sorted(registry())
    print(f"{ids.size} requests (Azure conv 2023), continuous batching max_batch {args.max_batch}, k = {k}, "
          f"alpha 0.7, h100-llama2-7b")
    start = time.perf_counter()
    warm = EngineState(ids[:8], arrival[:8], prompt[:8], output[:8], k, cost, acceptance=acceptance)
    serve(warm, make_policy("fcfs"), RunContext(k, cost, build_step_table(ids[:8], prompt[:8], output[:8], k, cost,
                                                                          acceptance), config, acceptance))
    print(f"{'warm-up':>15}: {time.perf_counter() - start:6.2f} s (loads or compiles the compiled engine)")
    start = time.perf_counter()
    table = build_step_table(ids, prompt, output, k, cost, acceptance)
    drawn = time.perf_counter() - start
    table.cum_ns  # noqa: B018  (batch-1 step prices: only the srpt-sd / ssjf oracles read them; counted here once)
    total = time.perf_counter() - start
    print(f"{'step table':>15}: {total:6.2f} s (shared by every scheduler: tokens {drawn:.2f} s, "
          f"batch-1 prices for the oracles {total - drawn:.2f} s)")
    for name in names:
        times = []
        for _ in range(args.repeats):
            state = EngineState(ids, arrival, prompt, output, k, cost, acceptance=acceptance, step_table=table)
            start = time.perf_counter()
            serve(state, make_policy(name), RunContext(k, cost, table, config, acceptance))
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        total += median
        jct = np.mean(state.finish_s - state.arrival_s)
        print(f"{name:>15}: median {median:6.2f} s ({', '.join(f'{t:.2f}' for t in times)}), "
              f"{ids.size / median:,.0f} req/s, mean JCT {jct:.3f} s")
    print(f"all {len(names)} schedulers: {total:.2f} s (step table + sum of medians)")


if __name__ == "__main__":
    main()
