"""`trace info`: the statistics that decide how a trace stresses a scheduler (load, burstiness, drift,
length spread, prompt-output correlation), as a plain dict (`trace_stats`) and a rich table."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
from rich.table import Table

SPARK = "▁▂▃▄▅▆▇█"
DISPERSION_BINS_S = (1.0, 10.0, 60.0)
PERCENTILES = (50, 90, 99)


def dispersion(arrival: np.ndarray, bin_s: float) -> float | None:
    """Index of dispersion (variance / mean) of arrival counts in full bins of `bin_s` seconds: 1 for a
    Poisson process, > 1 for bursty traffic. None when fewer than two full bins fit in the span."""
    bins = int(math.floor((arrival[-1] - arrival[0]) / bin_s))
    if bins < 2:
        return None
    counts = np.bincount(((arrival - arrival[0]) // bin_s).astype(np.int64), minlength=bins)[:bins]
    mean = counts.mean()
    return float(counts.var(ddof=1) / mean) if mean > 0 else None


def rate_series(arrival: np.ndarray, bins: int) -> tuple[list[float], float]:
    """Arrival rate (requests/s) in `bins` equal slices of the span, and the slice width in seconds."""
    span = float(arrival[-1] - arrival[0])
    if span <= 0:
        return [float(len(arrival))], 0.0
    width = span / bins
    idx = np.minimum(((arrival - arrival[0]) / width).astype(np.int64), bins - 1)
    return (np.bincount(idx, minlength=bins) / width).tolist(), width


def sparkline(values: list[float]) -> str:
    """Unicode block sparkline scaled from 0 to the maximum."""
    top = max(values) if values else 0.0
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in values)


def _lengths(values: np.ndarray) -> dict[str, float]:
    out = {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}
    out["mean"] = float(values.mean())
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def trace_stats(df: pl.DataFrame, spark_bins: int = 40) -> dict:
    """Statistics of a canonical trace. Rate = (n - 1) / span, the inverse of the mean inter-arrival gap;
    CV = std / mean of the gaps (1 for Poisson); Spearman = Pearson of average ranks."""
    arrival = df["arrival_s"].cast(pl.Float64).to_numpy()
    prompt = df["prompt_tokens"].cast(pl.Float64).to_numpy()
    output = df["output_tokens"].cast(pl.Float64).to_numpy()
    n = len(arrival)
    span = float(arrival[-1] - arrival[0]) if n else 0.0
    gaps = np.diff(arrival)
    rates, width = rate_series(arrival, spark_bins) if n else ([], 0.0)
    return {
        "requests": n,
        "span_s": span,
        "mean_rate_per_s": (n - 1) / span if span > 0 else None,
        "interarrival_cv": float(gaps.std() / gaps.mean()) if len(gaps) and gaps.mean() > 0 else None,
        "dispersion": {f"{b:g}s": dispersion(arrival, b) for b in DISPERSION_BINS_S} if n else {},
        "rate_over_time": rates,
        "rate_bin_s": width,
        "prompt_tokens": _lengths(prompt) if n else {},
        "output_tokens": _lengths(output) if n else {},
        "pearson": _pearson(prompt, output),
        "spearman": _pearson(pl.Series(prompt).rank("average").to_numpy(),
                             pl.Series(output).rank("average").to_numpy()),
    }


def stats_json(stats: dict) -> str:
    """`trace info --json`: the statistics of `trace_stats` (seconds, requests/s, tokens; null where
    undefined), strict JSON."""
    def clean(v: object) -> object:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return json.dumps(clean(stats), indent=2, allow_nan=False)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def stats_table(stats: dict, title: str) -> Table:
    """The rich table `trace info` prints."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("statistic", style="bold")
    table.add_column("value", no_wrap=True)
    table.add_row("requests", f"{stats['requests']:,}")
    table.add_row("span", f"{_fmt(stats['span_s'], 1)} s")
    table.add_row("mean rate", f"{_fmt(stats['mean_rate_per_s'])} requests/s")
    table.add_row("inter-arrival CV", _fmt(stats["interarrival_cv"]))
    table.add_row("dispersion of counts", "  ".join(f"{k}: {_fmt(v)}" for k, v in stats["dispersion"].items()))
    rates = stats["rate_over_time"]
    table.add_row(f"rate over time ({_fmt(stats['rate_bin_s'], 0)} s bins, max "
                  f"{_fmt(max(rates) if rates else None)}/s)", sparkline(rates))
    for column in ("prompt_tokens", "output_tokens"):
        table.add_row(column, "  ".join(f"{k} {_fmt(v, 0 if k != 'mean' else 1)}" for k, v in stats[column].items()))
    table.add_row("prompt-output correlation", f"Pearson {_fmt(stats['pearson'], 3)}  "
                                               f"Spearman {_fmt(stats['spearman'], 3)}")
    return table
