"""Cut a canonical trace down: a time window, a random thinning, a rate scale, a first-N. Used by `[trace]`
in scenarios and by `lapsbench trace slice`."""

from __future__ import annotations

import numpy as np
import polars as pl

from lapsbench.errors import LapsbenchError

# How a scenario names each parameter in an error; `lapsbench trace slice` passes its flags instead.
SCENARIO_KEYS = {"start_s": "trace.start_s", "duration_s": "trace.duration_s", "rate_scale": "trace.rate_scale",
                 "max_requests": "trace.max_requests", "sample_n": "sample_n", "sample_fraction": "sample_fraction"}


def slice_trace(df: pl.DataFrame, *, start_s: float = 0.0, duration_s: float = 0.0, rate_scale: float = 1.0,
                max_requests: int = 0, sample_n: int = 0, sample_fraction: float = 0.0,
                seed: int = 0, names: dict[str, str] | None = None) -> pl.DataFrame:
    """Keep arrivals in [start_s, start_s + duration_s) (duration 0 = to the end), re-based to start at 0;
    then keep a seeded random subset (`sample_n` requests or a `sample_fraction`, order and ids kept);
    then divide inter-arrival gaps by `rate_scale` (>1 = more load); then keep the first `max_requests`
    (0 = all). The order is fixed so a window means trace time, not scaled time. Request ids are kept, so
    a slice's requests can be matched to the source trace. Errors name each parameter as `names` says
    (default: the scenario's keys)."""
    name = names or SCENARIO_KEYS
    if not (np.isfinite(rate_scale) and rate_scale > 0):
        raise LapsbenchError(f"{name['rate_scale']}: {rate_scale!r} — expected a number > 0")
    for key, value in (("start_s", start_s), ("duration_s", duration_s), ("max_requests", max_requests),
                       ("sample_n", sample_n)):
        if not value >= 0:
            raise LapsbenchError(f"{name[key]}: {value!r} — expected a number >= 0")
    if sample_n and sample_fraction:
        raise LapsbenchError(f"{name['sample_n']} and {name['sample_fraction']}: give one of them, not both")
    if not 0.0 <= sample_fraction <= 1.0:
        raise LapsbenchError(f"{name['sample_fraction']}: {sample_fraction!r} — expected a fraction in (0, 1]")
    out = df.filter(pl.col("arrival_s") >= start_s)
    if duration_s > 0:
        out = out.filter(pl.col("arrival_s") < start_s + duration_s)
    if out.height == 0:
        raise LapsbenchError(
            f"{name['start_s']}, {name['duration_s']}: no requests in the window [{start_s}, "
            f"{start_s + duration_s if duration_s else 'end'}) s")
    if sample_n or sample_fraction:
        k = sample_n if sample_n else max(1, round(sample_fraction * out.height))
        if k > out.height:
            raise LapsbenchError(f"{name['sample_n']}: {k} — expected at most the {out.height} requests in the window")
        rows = np.sort(np.random.default_rng(np.random.SeedSequence(seed)).choice(out.height, k, replace=False))
        out = out[rows]
    out = out.with_columns(((pl.col("arrival_s") - start_s) / rate_scale).alias("arrival_s"))
    if max_requests > 0:
        out = out.head(max_requests)
    return out
