"""Compiled K choosers for `[speculation] adaptive` (lapsbench.config.speculation): the draft length of a step, or of
each request in a step, from what an engine knows cheaply at the step (docs/speculation.md §2).

All are plain @njit functions of arrays and scalars (no closures, no function arguments: those miss
numba's disk cache in every new process). An engine packs a scenario's choice once with `pack_adaptive`
and per step calls `choose_shared_k` (one K for the batch) or, for goodput with per_request = true,
`goodput_per_request_k` (a K per decoding request, priced as the mixed-K step: verify Σ(K_i + 1) tokens,
draft forward j over the requests with K_i > j).

Acceptance estimate (goodput): the chain model's per-token acceptance α_i of request i, from its draws so
far, as the posterior mean under a Beta prior of mean `prior_alpha` and weight `prior_strength` pseudo-trials:

    α̂_i = (prior_alpha · prior_strength + accepted_i) / (prior_strength + accepted_i + rejected_i)

accepted_i = drafts accepted (Σ min(draw, K) over its steps, before the output-length cap) and rejected_i
= steps whose draw rejected a draft (draw < K; a step with K = 0 tests nothing). This is the maximum-
likelihood α of a truncated geometric with a prior; accepted / drafted would be biased low (at α = 0.7,
K = 4 its mean is 0.44), because drafts after the first rejection are never tested."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from lapsbench.config.speculation import Adaptive, BatchTableSpec, GoodputSpec, OffUnderLoadSpec
from lapsbench.models.pricing import assemble_call, assemble_step_s, draft_forward_call, draft_forward_s, verify_span

FIXED, BATCH_TABLE, GOODPUT, OFF_UNDER_LOAD = 0, 1, 2, 3


class AdaptivePack(NamedTuple):
    """One scenario's K choice, in the form the compiled engines take (built once per run)."""

    code: int                # FIXED, BATCH_TABLE, GOODPUT or OFF_UNDER_LOAD
    k: int                   # the fixed speculation.k: the maximum of every choice
    k_max: int               # the largest K this choice may return
    table_batch: np.ndarray  # batch-table: first batch size of each row (int64, increasing, [0] = 1)
    table_k: np.ndarray      # batch-table: K of each row (int64)
    off_batch: int           # off-under-load: decoding requests from which K = 0
    per_request: bool        # goodput: a K per request
    prior_alpha: float       # goodput: acceptance prior mean
    prior_strength: float    # goodput: prior weight in pseudo-trials
    free_draft: bool         # off-under-load: while off, the draft's KV memory returns to the target's capacity


def pack_adaptive(spec: Adaptive | None, k: int) -> AdaptivePack:
    """The packed form of `speculation.adaptive` (None: the fixed k every step)."""
    batches = np.array([1], np.int64)
    ks = np.array([k], np.int64)
    code, k_max, off, per_request, prior_a, prior_s, free_draft = FIXED, k, 0, False, 0.7, 4.0, False
    if isinstance(spec, BatchTableSpec):
        code = BATCH_TABLE
        batches = np.array([b for b, _ in spec.table], np.int64)
        ks = np.array([kk for _, kk in spec.table], np.int64)
        k_max = int(ks.max())
    elif isinstance(spec, GoodputSpec):
        code, k_max, per_request = GOODPUT, spec.k_max, spec.per_request
        prior_a, prior_s = spec.prior_alpha, spec.prior_strength
    elif isinstance(spec, OffUnderLoadSpec):
        code, off, free_draft = OFF_UNDER_LOAD, spec.batch, spec.free_draft_memory
    return AdaptivePack(code, k, k_max, batches, ks, off, per_request, prior_a, prior_s, free_draft)


@njit(cache=True)
def batch_table_k(table_batch: np.ndarray, table_k: np.ndarray, n: int) -> int:
    """K of the last row whose batch size is <= n decoding requests (the first row's K for n < 1)."""
    i = np.searchsorted(table_batch, n, side="right") - 1
    return table_k[max(i, 0)]


@njit(cache=True)
def off_under_load_k(k: int, off_batch: int, n: int) -> int:
    """0 while at least `off_batch` requests decode, `k` otherwise."""
    return 0 if n >= off_batch else k


@njit(cache=True)
def alpha_estimate(accepted: int, rejected: int, prior_alpha: float, prior_strength: float) -> float:
    """Posterior-mean per-token acceptance of one request (module docstring)."""
    return (prior_alpha * prior_strength + accepted) / (prior_strength + accepted + rejected)


@njit(cache=True)
def expected_tokens(alpha: float, k: int, remaining: int) -> float:
    """E[tokens emitted] by a step drafting k at per-token acceptance α, for a request with `remaining`
    tokens left: Σ_{j=0..min(k, remaining−1)} α^j (= (1 − α^(k+1)) / (1 − α) when remaining > k; k + 1 at
    α = 1)."""
    top = min(k, remaining - 1)
    total, term = 0.0, 1.0
    for _ in range(top + 1):
        total += term
        term *= alpha
    return total


@njit(cache=True)
def goodput_shared_k(alpha: np.ndarray, remaining: np.ndarray, step_s: np.ndarray) -> int:
    """The K in 0..len(step_s)−1 maximising Σ_i E[tokens | α_i, K] / step_s[K] (ties: the smaller K).
    `step_s[K]`: the engine's price of this step with every decoding request drafting K."""
    best_k, best = 0, -1.0
    for k in range(step_s.size):
        tokens = 0.0
        for i in range(alpha.size):
            tokens += expected_tokens(alpha[i], k, remaining[i])
        rate = tokens / step_s[k]
        if rate > best * (1.0 + 1e-12):
            best_k, best = k, rate
    return best_k


@njit(cache=True)
def choose_shared_k(P: AdaptivePack, n: int, alpha: np.ndarray, remaining: np.ndarray,
                    step_s: np.ndarray) -> int:
    """One K for a step with `n` decoding requests. Goodput reads `alpha`, `remaining` (per decoding request)
    and `step_s` (price by K = 0..P.k_max); the other kinds ignore them (pass empty arrays)."""
    if P.code == BATCH_TABLE:
        return batch_table_k(P.table_batch, P.table_k, n)
    if P.code == OFF_UNDER_LOAD:
        return off_under_load_k(P.k, P.off_batch, n)
    if P.code == GOODPUT:
        return goodput_shared_k(alpha, remaining, step_s)
    return P.k


@njit(cache=True, inline="always")
def _ranks_before(alpha: np.ndarray, a: int, b: int) -> bool:
    """Row a comes before row b in the order by (−α, index)."""
    return alpha[a] > alpha[b] or (alpha[a] == alpha[b] and a < b)


@njit(cache=True, inline="always")
def _sift(alpha: np.ndarray, rows: np.ndarray, root: int, end: int) -> None:
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and _ranks_before(alpha, rows[child], rows[child + 1]):
            child += 1
        if not _ranks_before(alpha, rows[root], rows[child]):
            return
        rows[root], rows[child] = rows[child], rows[root]
        root = child


@njit(cache=True, _nrt=False)
def sort_by_alpha(alpha: np.ndarray, rows: np.ndarray, m: int) -> None:
    """Sort rows[:m] in place by (−α[row], row): heapsort, no scratch (the order is total: stability is moot)."""
    for root in range(m // 2 - 1, -1, -1):
        _sift(alpha, rows, root, m)
    for end in range(m - 1, 0, -1):
        rows[0], rows[end] = rows[end], rows[0]
        _sift(alpha, rows, 0, end)


@njit(cache=True, _nrt=False)
def goodput_per_request_k(pack, alpha: np.ndarray, remaining: np.ndarray, ctx: np.ndarray, n: int, k_max: int,
                          prefill: tuple, rows: np.ndarray, power: np.ndarray, pos: np.ndarray,
                          out_k: np.ndarray) -> float:
    """A K per decoding row (out_k[:n]) of a mixed-K step; returns the step's expected tokens per second.

    Row r has acceptance estimate alpha[r], `remaining[r]` tokens left (0: padding) and context ctx[r];
    `prefill` = (n_prefill, tokens, tokens², tokens·context, context, Σ chunk_bucket_ms) of the step's prefill
    chunks. Candidates are priced by the step pricing itself (lapsbench.models.pricing: `draft_forward_s` per
    draft position, `assemble_step_s` for the step), so the price of the K's returned is `mixed_step_time_s` of
    them, bit for bit. Greedy by draft position: a draft at position j is worth α_r^(j+1) tokens to row r (if it
    has more than j + 1 tokens left), so position j's drafters are the best n_j by α of position j−1's drafters that
    have a token left for it; n_j is the count that maximises the step's tokens/s with no drafts past j (ties:
    fewer), and the walk stops at the first n_j = 0. Exact for one position; greedy past it (draft positions
    cost alike and are worth less, so a position that does not pay alone is not paid for by later ones).
    O(k_max · (n + k_max)) prices after an O(n log n) sort. Allocates nothing: `rows` (int64, >= n) and `power`
    (float64, >= n) are scratch, `pos` (int64 [3, >= k_max]) holds each position's drafters (count, Σ context,
    longest context)."""
    n_pf, pf_tokens, pf_sq, pf_tc, pf_ctx, pf_bucket = prefill
    none = np.int64(0)  # not literal 0's: sort_by_alpha and assemble_step_s would be compiled for them too
    tokens, c_sum, c_max = 0.0, none, none
    n_cand = none
    for r in range(n):
        out_k[r] = 0
        power[r] = 1.0  # α_r^(K_r): the worth of row r's next draft is power[r]·α_r
        c_sum += ctx[r]
        c_max = max(c_max, ctx[r])
        if remaining[r] >= 1:
            tokens += 1.0
        if remaining[r] >= 2:  # it has a token left for a draft
            rows[n_cand] = r
            n_cand += 1
    sort_by_alpha(alpha, rows, n_cand)
    verify = n  # Σ(K_r + 1)
    # the inner loop over m inlines the pricing; the prices made once per call or per position are calls
    best = tokens / assemble_call(pack, n, verify, none, c_sum, verify_span(pack, c_max, none), 0.0, n_pf, pf_tokens,
                                   pf_sq, pf_tc, pf_ctx, pf_bucket)
    for j in range(k_max):
        keep = 0  # candidates with a token left for a draft at j, kept in order at the front
        for c in range(n_cand):
            r = rows[c]
            if remaining[r] - 1 > j:
                rows[keep] = r
                keep += 1
        span = verify_span(pack, c_max, j + 1)
        before = 0.0  # draft forwards 0..j−1 as chosen, at this step's span
        if not pack.fixed:
            for f in range(j):
                before += draft_forward_call(pack, f, pos[0, f], pos[1, f], pos[2, f], span)
        gain, m_c, m_max, best_m = 0.0, none, none, none
        for m in range(1, keep + 1):
            r = rows[m - 1]
            gain += power[r] * alpha[r]
            m_c += ctx[r]
            m_max = max(m_max, ctx[r])
            drafts = before + draft_forward_s(pack, j, m, m_c, m_max, span) if not pack.fixed else 0.0
            rate = (tokens + gain) / assemble_step_s(pack, n, verify + m, j + 1, c_sum, span, drafts, n_pf,
                                                     pf_tokens, pf_sq, pf_tc, pf_ctx, pf_bucket)
            if rate > best * (1.0 + 1e-12):
                best_m, best = m, rate
        if best_m == 0:
            break
        pos[0, j], pos[1, j], pos[2, j] = 0, 0, 0
        for m in range(best_m):
            r = rows[m]
            power[r] *= alpha[r]
            tokens += power[r]
            out_k[r] = j + 1
            pos[0, j] += 1
            pos[1, j] += ctx[r]
            pos[2, j] = max(pos[2, j], ctx[r])
        verify += best_m
        n_cand = best_m
    return best
