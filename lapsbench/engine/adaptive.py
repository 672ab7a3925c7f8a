"""Adaptive draft length in the batched engine (`[speculation] adaptive`, docs/speculation.md): the `choose_k`
phase of a step (one K shared by the step's decoding rows, or one per row for per-request goodput, from
lapsbench.models.kchoice), its mixed-K price, the tokens drawn at that K from the replication's acceptance draws
at the maximum k (common random numbers across K: min(accepted, K) + 1), the per-request acceptance counters
goodput reads, and the K statistics.

A fixed-K run never enters these functions (the engine keeps its step-table path, bit for bit)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from lapsbench.engine.batched_state import ERR_TABLE, OK
from lapsbench.engine.batched_step import prefill_sums
from lapsbench.models.acceptance import accepted_table
from lapsbench.models.kchoice import (
    FIXED,
    GOODPUT,
    AdaptivePack,
    alpha_estimate,
    choose_shared_k,
    goodput_per_request_k,
)
from lapsbench.models.pricing import mixed_step_time_s


class Adapt(NamedTuple):
    """The adaptive choice and its per-run arrays (allocated once: the loop allocates nothing)."""

    on: bool                 # an adaptive kind is set (False: the fixed k, nothing here is used)
    P: AdaptivePack
    accepted: np.ndarray     # int64: acceptance draws at the maximum k (lapsbench.models.acceptance.accepted_table)
    offset: np.ndarray       # int64: request r's draws start at accepted[offset[r]]
    by_position: bool        # draws indexed by output position (empirical), else by decode step
    n_acc: np.ndarray        # int64 per request: drafts accepted so far (Σ min(draw, K))
    n_rej: np.ndarray        # int64 per request: steps whose draw rejected a draft (draw < K)
    ks: np.ndarray           # int64 per member: this step's K
    ctx: np.ndarray          # int64 per decoding row: its context
    alpha: np.ndarray        # float64 per decoding row: acceptance estimate (goodput)
    remaining: np.ndarray    # int64 per decoding row: tokens left (0: padding or unused)
    step_s: np.ndarray       # float64 (k_max + 1): the step's price with every decoding row at K
    rows: np.ndarray         # int64 per decoding row: per-request goodput's candidate order (scratch)
    power: np.ndarray        # float64 per decoding row: per-request goodput's α^K (scratch)
    pos: np.ndarray          # int64 (3, k_max): per-request goodput's drafters per position (scratch)


def new_adapt(P: AdaptivePack | None, acceptance, output_tokens: np.ndarray, max_batch: int) -> Adapt:
    """The engine's adaptive state for one run (inert arrays when `P` is None or the fixed k)."""
    b, n = max(max_batch, 1), output_tokens.size
    on = P is not None and P.code != FIXED
    if not on:
        from lapsbench.models.kchoice import pack_adaptive

        P = pack_adaptive(None, 0) if P is None else P
        acc, off, by_position = np.zeros(1, np.int64), np.zeros(n, np.int64), False
    else:
        acc, off = accepted_table(acceptance, output_tokens)
        acc = np.ascontiguousarray(acc, np.int64)
        by_position = acceptance.indexed_by == "position"
    per_request = [np.zeros(n, np.int64) for _ in range(2)]
    per_row = [np.zeros(b, np.int64), np.zeros(b, np.int64), np.zeros(b), np.zeros(b, np.int64)]
    return Adapt(on, P, acc, np.ascontiguousarray(off, np.int64), by_position, *per_request, *per_row,
                 np.zeros(P.k_max + 1), np.zeros(b, np.int64), np.zeros(b), np.zeros((3, max(P.k_max, 1)), np.int64))


@njit(cache=True, inline="always")
def _decode_rows(R, M, W, A, nm):
    """Gather the step's decoding rows (padding included) into A.ctx / A.alpha / A.remaining and take its prefill
    sums; returns (n_dec, n_pf, c_sum, c_sq, c_before, before_sum)."""
    n_dec = np.int64(0)  # not a literal zero (batched_step.prefill_sums)
    for j in range(A.remaining.size):
        A.remaining[j] = 0
    for j in range(nm):
        i = W.members[j]
        if W.chunks[j] == 0:
            A.ctx[n_dec] = R.prompt_tokens[i] + R.generated[i]
            A.alpha[n_dec] = 0.0
            if not R.done[i]:
                A.remaining[n_dec] = R.output_tokens[i] - R.generated[i]
                A.alpha[n_dec] = alpha_estimate(A.n_acc[i], A.n_rej[i], A.P.prior_alpha, A.P.prior_strength)
            n_dec += 1
    n_pf, c_sum, c_sq, c_before, before_sum = prefill_sums(M, W, nm)
    return n_dec, n_pf, c_sum, c_sq, c_before, before_sum


@njit(cache=True, _nrt=False)
def choose_and_price(R, M, W, A, pack, nm):
    """The `choose_k` phase and the step's mixed-K price, K per member into A.ks (prefill chunks: 0); returns the
    step's time without stalls. One K for every decoding row (kchoice.choose_shared_k over the n decoding rows;
    goodput prices the step at each K = 0..k_max), or, for goodput with per_request, a K per decoding row
    (kchoice.goodput_per_request_k)."""
    n_dec, n_pf, c_sum, c_sq, c_before, before_sum = _decode_rows(R, M, W, A, nm)
    if A.P.code == GOODPUT and A.P.per_request:
        goodput_per_request_k(pack, A.alpha, A.remaining, A.ctx, n_dec, A.P.k_max,
                              (n_pf, c_sum, c_sq, c_before, before_sum), A.rows, A.power, A.pos, A.ks)
    else:
        if A.P.code == GOODPUT:
            for kk in range(A.step_s.size):
                for j in range(n_dec):
                    A.ks[j] = kk
                A.step_s[kk] = mixed_step_time_s(pack, A.ks, A.ctx, n_dec, n_pf, c_sum, c_sq, c_before, before_sum)
        kk = choose_shared_k(A.P, n_dec, A.alpha, A.remaining, A.step_s)
        for j in range(n_dec):
            A.ks[j] = kk
    t = mixed_step_time_s(pack, A.ks, A.ctx, n_dec, n_pf, c_sum, c_sq, c_before, before_sum)
    d = n_dec  # decoding row d is the d-th member with no chunk (d <= j): spread in place, from the end
    for j in range(nm - 1, -1, -1):
        if W.chunks[j] == 0:
            d -= 1
            A.ks[j] = A.ks[d]
        else:
            A.ks[j] = 0
    return t


@njit(cache=True, _nrt=False)
def draw_adaptive(R, W, A, nm):
    """Tokens each live decoding member keeps: min(draw, K) + 1, capped at its tokens left (static padding:
    -1); the goodput counters take the draw before the cap."""
    for j in range(nm):
        i = W.members[j]
        W.emitted[j] = -1
        if W.chunks[j] == 0 and not R.done[i]:
            slot = R.generated[i] if A.by_position else R.decode_steps[i]
            if slot >= max(R.output_tokens[i], 1):
                return ERR_TABLE
            d = A.accepted[A.offset[i] + slot]
            kk = A.ks[j]
            a = d if d < kk else kk
            A.n_acc[i] += a
            if d < kk:
                A.n_rej[i] += 1
            e = a + 1
            left = R.output_tokens[i] - R.generated[i]
            W.emitted[j] = e if e < left else left
    return OK


@njit(cache=True, _nrt=False)
def record_k(L, W, A, nm):
    """K statistics of the step: Σ K over live decoding request-steps, steps decoding, steps with SD off."""
    rows, total = 0, 0
    for j in range(nm):
        if W.chunks[j] == 0 and W.emitted[j] >= 0:
            rows += 1
            total += A.ks[j]
    if rows:
        L.k_rows += rows
        L.k_sum += total
        L.dec_steps += 1
        if total == 0:
            L.off_steps += 1
