"""Paired confidence intervals for "scheduler X versus the baseline", and the papers' named metrics.

Every scheduler of a comparison replays the same requests with the same acceptance randomness
(common random numbers), so the right comparison is *paired*: per replication and per request the
two schedulers saw the same input, and their difference has far less noise than either mean. Two
intervals for the relative change of a mean, Δ = mean(X) / mean(B) − 1, are computed here:

* `paired_t_ratio` — over replications (R ≥ 2): the ratio of means with a delta-method variance from
  the per-replication linearised residuals z_r = (X_r − Δ̂₁·B_r) / B̄, and a Student-t quantile with
  R − 1 degrees of freedom. It measures the noise of the acceptance process (what changes between
  replications) and shrinks like 1/√R.
* `paired_bootstrap_ratio` — over requests (any R, including 1): the same resampled request ids for
  both schedulers (a request keeps all its replications), percentile interval. It also counts the
  variation between requests of the trace, so it does not shrink to zero as R grows.

Both give exactly 0 with a zero-width interval when X and B are the same arrays, because the ratio of
identical floating-point sums is exactly 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from lapsbench.results.metrics import t95

BOOTSTRAP_RESAMPLES = 1000
_CHUNK = 100  # resamples per matrix product: bounds memory at _CHUNK × requests counts


@dataclass(frozen=True)
class Interval:
    """A point estimate with a 95% interval (NaN bounds when the method does not apply)."""

    estimate: float
    lo: float
    hi: float


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan)


def paired_t_ratio(x: np.ndarray, base: np.ndarray) -> Interval:
    """Relative change of the mean of `x` against `base`, both shaped (requests, replications) with the
    same request in the same row; t-interval over replications (NaN bounds for a single replication).

    The point estimate is the pooled ratio of means minus one, the same number the bootstrap reports, so
    the two intervals bracket one estimate."""
    x, base = _paired(x, base)
    if x.size == 0:
        return NAN_INTERVAL
    xr, br = x.mean(axis=0), base.mean(axis=0)   # per-replication means
    ratio = pooled_ratio(x, base)
    bbar = br.mean()
    reps = xr.size
    if reps < 2:
        return Interval(float(ratio - 1.0), math.nan, math.nan)
    z = (xr - ratio * br) / bbar
    half = t95(reps - 1) * float(z.std(ddof=1)) / math.sqrt(reps)
    return Interval(float(ratio - 1.0), float(ratio - 1.0 - half), float(ratio - 1.0 + half))


def _weight_chunks(n: int, resamples: int, seed: int | Sequence[int]) -> Iterator[np.ndarray]:
    """Resampling counts in chunks of at most _CHUNK rows: row b says how often each of the n request
    rows is drawn in resample b. The same seed gives the same rows for every scheduler, which is what
    makes the bootstrap paired; chunking bounds memory on traces of many thousands of requests."""
    entropy = [seed] if isinstance(seed, int) else list(seed)
    g = np.random.default_rng(np.random.SeedSequence([*entropy, 0x636F6D70]))  # "comp": a stream of its own
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        draws = g.integers(0, n, (rows, n))
        flat = (draws + (np.arange(rows) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def paired_bootstrap_ratio(x: np.ndarray, base: np.ndarray, seed: int | Sequence[int],
                           resamples: int = BOOTSTRAP_RESAMPLES) -> Interval:
    """Relative change of the mean of `x` against `base` ((requests, replications), paired by row), with a
    percentile interval over `resamples` paired resamples of the request rows (seeded by `seed`).

    Requests whose value is missing in either frame (TPOT of one-token outputs) get weight 0 in both,
    after drawing, so every scheduler of a comparison point is resampled with the same draws."""
    if x.shape != base.shape:
        raise ValueError(f"paired arrays differ in shape: {x.shape} vs {base.shape}")
    keep = np.isfinite(x).all(axis=1) & np.isfinite(base).all(axis=1)
    if not keep.any():
        return NAN_INTERVAL
    xs = np.where(keep, np.nan_to_num(x).sum(axis=1), 0.0)   # per request, summed over replications
    bs = np.where(keep, np.nan_to_num(base).sum(axis=1), 0.0)
    estimate = pooled_ratio(x[keep], base[keep]) - 1.0
    ratios = np.concatenate([(w @ xs) / (w @ bs) for w in _weight_chunks(x.shape[0], resamples, seed)])
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return Interval(float(estimate), math.nan, math.nan)
    lo, hi = np.quantile(ratios - 1.0, [0.025, 0.975])
    return Interval(float(estimate), float(lo), float(hi))


def pooled_ratio(x: np.ndarray, base: np.ndarray) -> float:
    """mean(x) / mean(base) over complete rows, summed in one fixed order (per request, then over
    requests) so both interval methods report the bit-identical point estimate."""
    return float(x.sum(axis=1).sum() / base.sum(axis=1).sum())


def _paired(x: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.shape != base.shape:
        raise ValueError(f"paired arrays differ in shape: {x.shape} vs {base.shape}")
    keep = np.isfinite(x).all(axis=1) & np.isfinite(base).all(axis=1)
    return x[keep], base[keep]


def ssjf_throughput(finish_s: np.ndarray) -> float:
    """SSJF's throughput (Qiu et al.): completions per second over the first quarter of completions,
    k / t_k with k = ⌊0.25·(N − 1)⌋ and t_k the completion time of the (k+1)-th finished job, measured
    from t = 0 of the run. NaN when k = 0 (fewer than five requests)."""
    finish = np.sort(np.asarray(finish_s, np.float64))
    k = int(math.floor(0.25 * (finish.size - 1)))
    if k <= 0 or not math.isfinite(finish[k]) or finish[k] <= 0:
        return math.nan
    return k / float(finish[k])


def offered_rate(arrival_s: np.ndarray) -> float:
    """Mean arrival rate of a run, (N − 1) / (last arrival − first arrival): the load the trace offers."""
    a = np.asarray(arrival_s, np.float64)
    span = float(a.max() - a.min()) if a.size else 0.0
    return (a.size - 1) / span if span > 0 else math.nan
