"""Per-request records → summaries. Pure functions of the records frame; nothing here simulates."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from lapsbench.config.scenario import SloSpec

LATENCIES = ("jct_s", "ttft_s", "tpot_s", "itl_s")
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))

# Two-sided 95% Student-t quantiles by degrees of freedom (df above the last key uses the normal 1.96).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t95(df: int) -> float:
    """Student-t 0.975 quantile (conservative: the table entry at or below `df`)."""
    if df < 1:
        return math.nan
    keys = [k for k in _T95 if k <= df]
    return _T95[max(keys)] if df <= 120 else 1.96


def ci95_halfwidth(values: np.ndarray) -> float:
    """Half-width of the 95% t-interval of the mean of independent values (NaN for fewer than two)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return math.nan
    return float(t95(values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))


def _slo_met(df: pl.DataFrame, slo: SloSpec) -> pl.Expr | None:
    conds = []
    if slo.ttft_s > 0:
        conds.append(pl.col("ttft_s") <= slo.ttft_s)
    if slo.tpot_s > 0:
        conds.append(pl.col("tpot_s").fill_null(0.0) <= slo.tpot_s)
    if slo.e2e_s > 0:
        conds.append(pl.col("jct_s") <= slo.e2e_s)
    if not conds:
        return None
    expr = conds[0]
    for c in conds[1:]:
        expr = expr & c
    return expr


def summarize_replications(requests: pl.DataFrame, slo: SloSpec | None = None,
                           engine_stats: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (scheduler, replication): counts, latency means and percentiles, throughput, goodput."""
    slo = slo or SloSpec()
    aggs: list[pl.Expr] = [pl.len().alias("requests")]
    for col in LATENCIES:
        aggs.append(pl.col(col).mean().alias(f"{col.removesuffix('_s')}_mean_s"))
        for name, q in QUANTILES:
            aggs.append(pl.col(col).quantile(q, interpolation="linear").alias(f"{col.removesuffix('_s')}_{name}_s"))
    makespan = pl.col("finish_s").max() - pl.col("arrival_s").min()
    aggs += [
        makespan.alias("makespan_s"),
        (pl.len() / makespan).alias("throughput_rps"),
        (pl.col("output_tokens").sum() / makespan).alias("throughput_tok_s"),
        pl.col("preemptions").mean().alias("preemptions_mean"),
        pl.col("preempted_s").sum().alias("preempted_s_total"),
        (pl.col("jct_s") / pl.col("output_tokens")).mean().alias("per_token_latency_mean_s"),
    ]
    met = _slo_met(requests, slo)
    if met is not None:
        aggs += [met.mean().alias("slo_attainment"), (met.sum() / makespan).alias("goodput_rps")]
    out = (requests.group_by(["scheduler", "replication"], maintain_order=True).agg(aggs)
           .sort(["replication"], maintain_order=True))
    if engine_stats is not None:
        out = out.join(engine_stats, on=["scheduler", "replication"], how="left", maintain_order="left")
    return out


def summarize(per_replication: pl.DataFrame) -> pl.DataFrame:
    """One row per scheduler: every metric averaged over replications, plus 95% CI half-widths of the
    mean latencies across replications (NaN with a single replication). `requests` is the request count of
    a replication (their mean where `[trace] synth` windows differ), `requests_total` the sum over them."""
    metrics = [c for c in per_replication.columns if c not in ("scheduler", "replication")]
    rows = []
    for label in per_replication["scheduler"].unique(maintain_order=True):
        part = per_replication.filter(pl.col("scheduler") == label)
        row: dict[str, object] = {"scheduler": label, "replications": part.height}
        for m in metrics:
            row[m] = float(part[m].mean())
            if m == "requests":
                counts = part[m]
                row[m] = int(counts[0]) if counts.n_unique() == 1 else float(counts.mean())
                row["requests_total"] = int(counts.sum())
        for m in ("jct_mean_s", "ttft_mean_s", "tpot_mean_s"):
            row[m.replace("_mean_s", "_mean_ci95_s")] = ci95_halfwidth(part[m].to_numpy())
        rows.append(row)
    return pl.DataFrame(rows)
