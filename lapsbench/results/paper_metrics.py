"""Metrics defined the way the papers defined them (baselines.md §6.2), beside lapsbench's own.

`thr25`: SSJF's "throughput", `stats.ssjf_throughput` (one definition) — the completion rate over the first
25% of completions: k / t_k with k = ⌊0.25·(N − 1)⌋ and t_k the completion time of the (k + 1)-th finished
job, measured from t = 0 (the first arrival); NaN for fewer than five requests. Not a capacity measure: a
work-conserving single server has the same sustained throughput (N / makespan) under every policy."""

from __future__ import annotations

import polars as pl

from lapsbench.results.metrics import ci95_halfwidth
from lapsbench.results.stats import ssjf_throughput as thr25

__all__ = ["per_replication", "thr25", "versus_baseline"]


def per_replication(requests: pl.DataFrame) -> pl.DataFrame:
    """One row per (scheduler, replication): mean JCT, thr25, sustained throughput (N / makespan)."""
    rows = []
    for (label, rep), g in requests.group_by(["scheduler", "replication"], maintain_order=True):
        finish = g["finish_s"].to_numpy()
        rows.append({"scheduler": label, "replication": rep, "jct_mean_s": float(g["jct_s"].mean()),
                     "thr25": thr25(finish), "sustained_rps": g.height / float(finish.max())})
    return pl.DataFrame(rows)


def versus_baseline(requests: pl.DataFrame, baseline: str = "fcfs") -> pl.DataFrame:
    """Per scheduler: mean JCT, its reduction vs the baseline, thr25 and its ratio vs the baseline, and
    sustained throughput — each a mean over replications with a 95% CI (paired by replication)."""
    reps = per_replication(requests)
    base = reps.filter(pl.col("scheduler") == baseline).select(
        "replication", pl.col("jct_mean_s").alias("b_jct"), pl.col("thr25").alias("b_thr"))
    paired = reps.join(base, on="replication").with_columns(
        (1 - pl.col("jct_mean_s") / pl.col("b_jct")).alias("jct_reduction"),
        (pl.col("thr25") / pl.col("b_thr")).alias("thr25_ratio"))
    out = []
    for (label,), g in paired.group_by(["scheduler"], maintain_order=True):
        row = {"scheduler": label}
        for col in ("jct_mean_s", "jct_reduction", "thr25", "thr25_ratio", "sustained_rps"):
            v = g[col].to_numpy()
            row[col] = float(v.mean())
            row[f"{col}_ci"] = ci95_halfwidth(v)
        out.append(row)
    return pl.DataFrame(out)
