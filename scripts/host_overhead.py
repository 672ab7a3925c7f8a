"""Host time of one replay decode step on each CPU: does the core the replay runs on change its step time?

    python scripts/host_overhead.py --out host.csv [--steps 100] [--context 1100] [--device cuda]

Builds the replay engine (lapsbench.replay.torch_engine) for one request of `--context` cached tokens at
batch 1, then times TorchExecutor.execute on that decode step `--steps` times while pinned to each CPU in turn
(and unpinned, before and after): wall time of the call minus the GPU time between its CUDA events (on the
CPU device, the whole call). Prints the median and 90th percentile per CPU and writes them to --out (CSV).
The scheduling decision and the loop's bookkeeping are not in it: this is the executor's share of host time.
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import numpy as np

from lapsbench.calibrate.models import parse_model_spec
from lapsbench.engine.context import BatchStep
from lapsbench.replay.torch_engine import TorchExecutor


def decode_step(context: int, k: int) -> BatchStep:
    none = np.empty(0, np.int64)
    return BatchStep(k=k, decode=np.array([0]), context=np.array([context]), emitted=np.array([1]),
                     prefill=none, chunk=none, cached=none, completes=np.empty(0, bool), resident=np.ones(1, bool))


def time_steps(ex: TorchExecutor, step: BatchStep, n: int) -> np.ndarray:
    """Host ms of n executions of `step` (wall of the call minus its GPU time)."""
    host = np.empty(n)
    for i in range(n):
        t = time.perf_counter_ns()
        gpu = ex.execute(step)
        host[i] = (time.perf_counter_ns() - t) / 1e6 - (gpu or 0.0)
    return host


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--context", type=int, default=1100)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--target", default="llama3-8b")
    ap.add_argument("--draft", default="llama-68m")
    a = ap.parse_args()
    k = 4
    ex = TorchExecutor(parse_model_spec(a.target), parse_model_spec(a.draft), a.device)
    ex.prepare(np.array([a.context]), np.array([8]), k, np.inf, 1, 16)
    ex.reset_kv(1)
    step = decode_step(a.context, k)
    time_steps(ex, step, 20)  # capture + warm-up
    cpus = sorted(os.sched_getaffinity(0))
    rows = []

    def measure(label: str, on: set[int], n: int) -> None:
        os.sched_setaffinity(0, on)
        time_steps(ex, step, 5)
        h = time_steps(ex, step, n)
        rows.append({"cpus": label, "steps": n, "host_ms_median": round(float(np.median(h)), 4),
                     "host_ms_p90": round(float(np.percentile(h, 90)), 4), "host_ms_mean": round(float(h.mean()), 4)})
        print(f"{label:>8}  median {rows[-1]['host_ms_median']:.3f}  p90 {rows[-1]['host_ms_p90']:.3f}  "
              f"mean {rows[-1]['host_ms_mean']:.3f} ms", flush=True)

    measure("all", set(cpus), 4 * a.steps)
    for c in cpus:
        measure(str(c), {c}, a.steps)
    measure("all", set(cpus), 4 * a.steps)
    os.sched_setaffinity(0, set(cpus))
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
