"""Adaptive speculation against fixed K on the Azure conv trace over a load sweep (docs/speculation.md §6).

For each load (`trace.rate_scale`) and each speculation setting — fixed K = 0..6 and the adaptive kinds (K at
most 6; goodput also per request, off-under-load also with free_draft_memory) — runs the scenario's fcfs
scheduler in-process (`lapsbench.run.runner.run_scenario`) over `--replications` replications (the acceptance
draws differ per replication, the requests do not) and prints per (load, setting) the throughput (output tokens
/ makespan) and mean JCT with 95% t intervals over
replications, and per load the best fixed K against the best adaptive setting.

    python scripts/adaptive_sweep.py                         # scenarios/azure-conv-load.toml, 3 replications
    python scripts/adaptive_sweep.py --rates 1,2,3 --replications 2
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from lapsbench.config.scenario import load_scenario
from lapsbench.results.metrics import t95
from lapsbench.results.stats import paired_t_ratio
from lapsbench.run.runner import run_scenario

FIXED = [f"k{k}" for k in range(7)]
ADAPTIVE = {
    "batch-table": '{kind="batch-table",table=[[1,5],[17,4],[33,3],[65,1],[129,0]]}',
    "goodput": '{kind="goodput",k_max=6}',
    "goodput-per-request": '{kind="goodput",k_max=6,per_request=true}',
    "off-under-load": '{kind="off-under-load",batch=64}',
    "off-under-load-free": '{kind="off-under-load",batch=64,free_draft_memory=true}',
}


def overrides(setting: str, rate: float, replications: int) -> list[str]:
    base = [f"trace.rate_scale={rate}", f"replications={replications}"]
    if setting in ADAPTIVE:
        return base + ["speculation.k=6", f"speculation.adaptive={ADAPTIVE[setting]}"]
    return base + [f"speculation.k={int(setting[1:])}"]


def ci(x: np.ndarray) -> tuple[float, float]:
    """Mean and 95% t half-width over replications."""
    half = t95(x.size - 1) * x.std(ddof=1) / np.sqrt(x.size) if x.size > 1 else float("nan")
    return float(x.mean()), float(half)


def measure(path: str, setting: str, rate: float, replications: int) -> tuple[np.ndarray, np.ndarray, float]:
    s = load_scenario(path, overrides(setting, rate, replications))
    s = dataclasses.replace(s, scheduler=tuple(x for x in s.scheduler if x.name == "fcfs"))
    r = run_scenario(s)
    thr, jct = [], []
    for (_,), g in r.requests.group_by(["replication"], maintain_order=True):
        span = g["finish_s"].max() - g["arrival_s"].min()
        thr.append(g["output_tokens"].sum() / span)
        jct.append(g["jct_s"].to_numpy())
    k_mean = float(r.engine_stats["k_mean"].mean()) if "k_mean" in r.engine_stats.columns else float(setting[1:])
    return np.array(thr), np.stack(jct, axis=1), k_mean  # jct: (requests, replications)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/azure-conv-load.toml")
    ap.add_argument("--rates", default="1,2,3,4")
    ap.add_argument("--replications", type=int, default=3)
    a = ap.parse_args()
    print("| load × | setting | mean K | throughput tok/s (95% CI) | mean JCT s (95% CI) |")
    print("|---|---|---|---|---|")
    for rate in (float(x) for x in a.rates.split(",")):
        rows = {}
        for setting in FIXED + list(ADAPTIVE):
            thr, jct, k_mean = measure(a.scenario, setting, rate, a.replications)
            rows[setting] = (ci(thr), ci(jct.mean(axis=0)), jct)
            (t, th), (j, jh), _ = rows[setting]
            print(f"| {rate:g} | {setting} | {k_mean:.2f} | {t:,.0f} ± {th:,.0f} | {j:.3f} ± {jh:.3f} |", flush=True)
        best_f = max(FIXED, key=lambda x: rows[x][0][0])
        best_a = max(ADAPTIVE, key=lambda x: rows[x][0][0])
        (tf, _), _, jf = rows[best_f]
        (ta, _), _, ja = rows[best_a]
        d = paired_t_ratio(ja, jf)  # paired: same requests, common acceptance draws across K
        print(f"| {rate:g} | best adaptive {best_a} vs best fixed {best_f} | | {ta / tf - 1:+.2%} | "
              f"{d.estimate:+.2%} [{d.lo:+.2%}, {d.hi:+.2%}] |", flush=True)


if __name__ == "__main__":
    main()
