"""Predictors with explicit error models: what a scheduler believes about a request, drawn once per request.

Length predictors (`predictor = ...` on a scheduler; every draw is counter-based on the replication's
LENGTH_PREDICTOR / RANK_PREDICTOR stream, so every scheduler using the same predictor sees the same
predictions):

- `oracle`: the true output length.
- `lognormal`: true · exp(σ·Z), σ = ln(1 + median_error) / 0.6745, so the median of
  max(pred/true, true/pred) − 1 equals `predictor_median_error`.
- `bucketed`: an SSJF-style classifier over buckets cut at `predictor_cuts`. Default (empty): the
  workload's own cuts, at the p25/p50/p75/p99 of output lengths the run does not score (`quantile_cuts`
  of the runner's held-out requests; SSJF's cuts are those quantiles of its own data); `VICUNA_CUTS`
  (42/141/294/503, SSJF's Vicuna-13B cuts) is an option. The predicted bucket follows a confusion
  matrix: the true bucket with probability `predictor_exact` (0.60), a neighbouring bucket with
  probability `predictor_within_one` − `predictor_exact` (0.33, split equally between the neighbours that
  exist), any bucket two or more away with the rest (spread equally). The ordering key is the bucket
  index (as in SSJF); the token estimate is the bucket's midpoint (first bucket from 1, last bucket =
  1.5 × its lower cut).
- `rank`: a score ln(true) + σ·Z with σ calibrated (bisection on the workload itself, at most 1500
  requests sampled deterministically) so that Kendall's τ_b between score and true length is
  `predictor_tau` (vllm-ltr reports 0.52–0.64); the token estimate is exp(score).
- `trace`: the trace's `predicted_output_tokens` column.

Acceptance predictor (LAPS-SD): the observed acceptance so far, accepted drafts / drafted tokens over the
request's speculative steps, optionally smoothed by a Beta prior of mean `acceptance_prior_mean` and
strength `acceptance_prior_strength` (pseudo-drafts; 0 = observed only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lapsbench.errors import LapsbenchError
from lapsbench.models import rng
from lapsbench.models.acceptance import normals

if TYPE_CHECKING:
    from lapsbench.engine.state import EngineState

LENGTH_PREDICTORS = ("oracle", "lognormal", "bucketed", "rank", "trace")
VICUNA_CUTS = (42, 141, 294, 503)
SSJF_QUANTILES = (0.25, 0.5, 0.75, 0.99)


@dataclass(frozen=True)
class Prediction:
    tokens: np.ndarray  # predicted total output tokens (float)
    key: np.ndarray     # what a predicted-length ordering sorts by (bucket index for `bucketed`)


def check_length_params(where: str, kind: str, median_error: float, cuts: tuple, exact: float,
                        within_one: float, tau: float) -> tuple[int, ...]:
    """Validate predictor parameters (one-line errors naming the key); returns the cuts as a tuple."""
    if kind not in LENGTH_PREDICTORS:
        raise LapsbenchError(f"{where}.predictor: {kind!r} — expected one of {list(LENGTH_PREDICTORS)}")
    if not median_error >= 0:
        raise LapsbenchError(f"{where}.predictor_median_error: {median_error!r} — expected a number >= 0")
    cuts_t = tuple(cuts)
    if cuts_t and (not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in cuts_t)
            or list(cuts_t) != sorted(set(cuts_t))):
        raise LapsbenchError(f"{where}.predictor_cuts: {list(cuts_t)!r} — expected strictly increasing integers >= 1 "
                             "(or [] for the workload's own cuts)")
    if not (0 < exact <= within_one <= 1):
        raise LapsbenchError(f"{where}.predictor_exact / predictor_within_one: {exact!r} / {within_one!r} — "
                             "expected 0 < exact <= within_one <= 1")
    if not (-1 < tau <= 1):
        raise LapsbenchError(f"{where}.predictor_tau: {tau!r} — expected a Kendall tau in (-1, 1]")
    return cuts_t


def confusion_matrix(n_buckets: int, exact: float, within_one: float) -> np.ndarray:
    """Row i: P(predicted bucket j | true bucket i), as described in the module docstring."""
    m = np.zeros((n_buckets, n_buckets))
    for i in range(n_buckets):
        near = [j for j in (i - 1, i + 1) if 0 <= j < n_buckets]
        far = [j for j in range(n_buckets) if abs(j - i) >= 2]
        m[i, i] = exact
        rest_near, rest_far = within_one - exact, 1.0 - within_one
        if not far:
            rest_near += rest_far
            rest_far = 0.0
        if not near:
            m[i, i] += rest_near
            rest_near = 0.0
        for j in near:
            m[i, j] += rest_near / len(near)
        for j in far:
            m[i, j] += rest_far / len(far)
    return m


def quantile_cuts(lengths: np.ndarray, quantiles: tuple[float, ...] = SSJF_QUANTILES) -> tuple[int, ...]:
    """Bucket cuts at length quantiles, as SSJF's are the p25/p50/p75/p99 of its data: cut = ⌊quantile⌋ + 1,
    so bucket [cut_i, cut_{i+1}) starts just above a quantile; equal cuts merge (fewer buckets)."""
    q = np.quantile(np.asarray(lengths, np.float64), quantiles)
    return tuple(sorted({int(np.floor(v)) + 1 for v in q}))


def bucket_of(tokens: np.ndarray, cuts: tuple[int, ...]) -> np.ndarray:
    return np.searchsorted(np.asarray(cuts), tokens, side="right")


def bucket_tokens(cuts: tuple[int, ...]) -> np.ndarray:
    lo = np.concatenate(([1], cuts))
    hi = np.concatenate((cuts, [2 * cuts[-1]]))  # so the last bucket's midpoint is 1.5 × its lower cut
    return (lo + hi) / 2.0


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's τ_b by brute force over pairs (fine for a few thousand points)."""
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    iu = np.triu_indices(x.size, 1)
    dx, dy = dx[iu], dy[iu]
    denom = np.sqrt(np.count_nonzero(dx) * np.count_nonzero(dy))
    return float(np.sum(dx * dy) / denom) if denom else 0.0


def _rank_sigma(log_true: np.ndarray, z: np.ndarray, tau: float) -> float:
    if log_true.size < 3 or tau >= kendall_tau_b(log_true, log_true):
        return 0.0
    lo, hi = 0.0, 1.0
    while kendall_tau_b(log_true, log_true + hi * z) > tau and hi < 1e6:
        hi *= 2
    for _ in range(30):
        mid = (lo + hi) / 2
        if kendall_tau_b(log_true, log_true + mid * z) > tau:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def predict_lengths(state: EngineState, kind: str, median_error: float = 0.25,
                    cuts: tuple[int, ...] = VICUNA_CUTS, exact: float = 0.60, within_one: float = 0.93,
                    tau: float = 0.6) -> Prediction:
    """One prediction per request of `state` (total output tokens), fixed at arrival."""
    true = state.output_tokens.astype(np.float64)
    if kind == "oracle":
        return Prediction(true, true)
    if kind == "trace":
        if "predicted_output_tokens" not in state.columns:
            raise LapsbenchError("scheduler.predictor: \"trace\" but the trace has no predicted_output_tokens "
                                 f"column; expected one of {[p for p in LENGTH_PREDICTORS if p != 'trace']}")
        pred = np.asarray(state.columns["predicted_output_tokens"], np.float64)
        return Prediction(pred, pred)
    key = rng.stream_key(state.seed, state.replication, rng.Streams.LENGTH_PREDICTOR)
    if kind == "lognormal":
        sigma = np.log1p(median_error) / 0.6744897501960817
        pred = true * np.exp(sigma * normals(key, state.request_id, np.zeros(state.n, np.int64)))
        return Prediction(pred, pred)
    if kind == "bucketed":
        if not cuts:  # no cuts fixed by the run (bare engine use): the scored requests' own, in-sample
            cuts = quantile_cuts(state.output_tokens) if state.n else VICUNA_CUTS
        m = confusion_matrix(len(cuts) + 1, exact, within_one)
        cdf = np.cumsum(m, axis=1)
        cdf[:, -1] = 1.0
        true_b = bucket_of(state.output_tokens, cuts)
        u = rng.uniform(key, state.request_id, np.ones(state.n, np.int64))
        pred_b = (u[:, None] > cdf[true_b]).sum(axis=1)
        return Prediction(bucket_tokens(cuts)[pred_b], pred_b.astype(np.float64))
    # rank
    rkey = rng.stream_key(state.seed, state.replication, rng.Streams.RANK_PREDICTOR)
    z = normals(rkey, state.request_id, np.zeros(state.n, np.int64))
    log_true = np.log(true)
    sample = np.arange(state.n)
    if state.n > 1500:
        sample = np.sort(np.argsort(rng.uniform(rkey, state.request_id, np.full(state.n, 7)))[:1500])
    sigma = _rank_sigma(log_true[sample], z[sample], tau)
    score = log_true + sigma * z
    return Prediction(np.exp(score), score)
