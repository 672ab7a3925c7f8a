"""Prefill step time per prompt bucket, eager against CUDA graph (`lapsbench replay --prefill-graphs`):

    python scripts/prefill_timing.py --out prefill.csv [--reps 5] [--max-tokens 3456] [--device cuda]

Builds the replay engine (lapsbench.replay.torch_engine) with every bucket of 64 .. --max-tokens tokens warmed
and captured, then runs one request's prefill from an empty cache (both models) at each bucket's full length,
--reps times eagerly and --reps times as the bucket's graph, alternating. Writes per bucket and mode the
median and the spread (max − min) of the step's GPU time (CUDA events; on the CPU device, the wall time) and
of its wall time. The eager prefill is launch-bound for short prompts, so its time follows the CPU's speed.
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np

from lapsbench.calibrate.models import parse_model_spec
from lapsbench.engine.context import BatchStep
from lapsbench.replay.torch_engine import PREFILL_TOKENS, TorchExecutor


def prefill_step(c: int, k: int) -> BatchStep:
    none = np.empty(0, np.int64)
    return BatchStep(k=k, decode=none, context=none, emitted=none, prefill=np.array([0]), chunk=np.array([c]),
                     cached=np.array([0]), completes=np.ones(1, bool), resident=np.ones(1, bool))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=3456)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--target", default="llama3-8b")
    ap.add_argument("--draft", default="llama-68m")
    a = ap.parse_args()
    k = 4
    buckets = list(range(PREFILL_TOKENS, a.max_tokens + 1, PREFILL_TOKENS))
    ex = TorchExecutor(parse_model_spec(a.target), parse_model_spec(a.draft), a.device, prefill_graphs=True)
    t = time.perf_counter()
    ex.prepare(np.array(buckets), np.full(len(buckets), 8), k, np.inf, 1, 16)
    print(f"warm-up {ex.warm_ns / 1e9:.1f} s, {len(ex.prefill_graph)} prefill graphs, "
          f"set-up {time.perf_counter() - t:.1f} s", flush=True)
    ex.reset_kv(1)
    rows = []
    for cp in buckets:
        step = prefill_step(cp, k)
        got: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(a.reps):
            for graphs in (False, True):
                ex.prefill_graphs = graphs
                t0 = time.perf_counter_ns()
                gpu = ex.execute(step)
                wall = (time.perf_counter_ns() - t0) / 1e6
                got[graphs].append((gpu if gpu is not None else wall, wall))
        for graphs, v in got.items():
            g, w = np.array(v).T
            rows.append({"tokens": cp, "mode": "graph" if graphs else "eager", "reps": a.reps,
                         "gpu_ms_median": round(float(np.median(g)), 4), "gpu_ms_spread": round(float(np.ptp(g)), 4),
                         "wall_ms_median": round(float(np.median(w)), 4), "wall_ms_spread": round(float(np.ptp(w)), 4)})
        e, g = rows[-2], rows[-1]
        print(f"{cp:5d}  eager {e['gpu_ms_median']:7.2f} ±{e['gpu_ms_spread']:5.2f}  graph {g['gpu_ms_median']:7.2f} "
              f"±{g['gpu_ms_spread']:5.2f} ms", flush=True)
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
