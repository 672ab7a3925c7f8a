"""Cut a canonical trace down: a time window, a first-N, a rate scale. Used by `[trace]` in scenarios
and by `lapsbench trace slice`."""

from __future__ import annotations

import polars as pl

from lapsbench.errors import LapsbenchError


def slice_trace(df: pl.DataFrame, *, start_s: float = 0.0, duration_s: float = 0.0, rate_scale: float = 1.0,
                max_requests: int = 0) -> pl.DataFrame:
    """Keep arrivals in [start_s, start_s + duration_s) (duration 0 = to the end), re-based to start at 0,
    then divide inter-arrival gaps by `rate_scale` (>1 = more load), then keep the first `max_requests`
    (0 = all). The order of operations is fixed so a window means trace time, not scaled time."""
    if rate_scale <= 0:
        raise LapsbenchError(f"trace.rate_scale: {rate_scale!r} — expected a number > 0")
    if start_s < 0 or duration_s < 0 or max_requests < 0:
        raise LapsbenchError("trace window: start_s, duration_s and max_requests must be >= 0")
    out = df.filter(pl.col("arrival_s") >= start_s)
    if duration_s > 0:
        out = out.filter(pl.col("arrival_s") < start_s + duration_s)
    out = out.with_columns(((pl.col("arrival_s") - start_s) / rate_scale).alias("arrival_s"))
    if max_requests > 0:
        out = out.head(max_requests)
    if out.height == 0:
        raise LapsbenchError(
            f"trace window: no requests in [{start_s}, {start_s + duration_s if duration_s else 'end'}) s")
    return out
