"""The batch-1 step table under `[speculation] adaptive` goodput (docs/speculation.md §5).

At batch size 1 a step holds one request, so its draft length K depends only on that request's acceptance
history and context: the whole K sequence, and with it each step's tokens and time, is drawn once per
replication like the fixed-K table (lapsbench.engine.steptable), for every scheduler. The batched engine chooses
goodput's K per step at run time instead (lapsbench/engine/adaptive.py), because there K depends on the batch."""

from __future__ import annotations

import numpy as np
from numba import njit

from lapsbench.engine.steptable import StepTable, _segment_cumsum, _token_dtype, prefill_ns, to_ns
from lapsbench.models.cost import CostModel
from lapsbench.models.kchoice import alpha_estimate, goodput_shared_k
from lapsbench.models.pricing import mixed_step_time_s


def build_goodput_step_table(prompt: np.ndarray, output: np.ndarray, k: int, cost: CostModel, acceptance,
                             P) -> StepTable:
    """The step table under `[speculation] adaptive` goodput (`P`: its lapsbench.models.kchoice.AdaptivePack) at
    batch size 1, where a step holds one request: each decode step drafts the K in 0..P.k_max maximising
    E[tokens | α̂, K] / step time(K, context) at batch 1 (kchoice.goodput_shared_k over one request; α̂ =
    kchoice.alpha_estimate of its draws so far, with P's prior) and emits min(d, K) + 1 of its draw d at the
    maximum k (common random numbers across K: lapsbench.models.acceptance.accepted_table, as the batched
    engine draws), capped at the tokens left; its time is the batch-1 price at that K (pricing.mixed_step_time_s,
    which at one request drafting K is the step price at k = K), rounded once to ns. Step 0 is the prefill."""
    from lapsbench.models.acceptance import accepted_table
    from lapsbench.models.pricing import pack_cost

    prompt, output = np.asarray(prompt, np.int64), np.asarray(output, np.int64)
    n = output.size
    pack = pack_cost(cost, k)
    lo = int(prompt.min(initial=0))
    hi = int((prompt + output).max(initial=0)) + 1
    price_s = _batch1_prices(pack, lo, hi, int(P.k_max))
    acc, acc_off = accepted_table(acceptance, output)
    args = (prompt, output, np.ascontiguousarray(acc, np.int64), np.ascontiguousarray(acc_off, np.int64),
            acceptance.indexed_by == "position", float(P.prior_alpha), float(P.prior_strength), lo, price_s,
            to_ns(price_s), prefill_ns(cost, k, prompt))
    counts = np.zeros(n, np.int64)
    empty = np.zeros(0, np.int64)
    _goodput_steps(*args, empty, empty, empty, empty, counts, False)  # pass 1: steps per request
    offset = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offset[1:])
    rows = int(offset[-1])
    tokens, ns, ks = np.zeros(rows, np.int64), np.zeros(rows, np.int64), np.zeros(rows, np.int64)
    _goodput_steps(*args, offset, tokens, ns, ks, counts, True)
    starts = offset[:-1]  # every request has its prefill row
    cum_tokens = _segment_cumsum(tokens, starts).astype(_token_dtype(output)) if rows else tokens
    cum_ns = _segment_cumsum(ns, starts) if rows else ns
    return StepTable(offset, cum_tokens, lambda _offset, _tokens: cum_ns, ks)


@njit(cache=True)
def _batch1_prices(pack, lo: int, hi: int, k_max: int) -> np.ndarray:
    """Seconds of a batch-1 decode step at context lo..hi−1 (rows) drafting K = 0..k_max (columns)."""
    out = np.zeros((max(hi - lo, 0), k_max + 1))
    ks, ctx = np.zeros(1, np.int64), np.zeros(1, np.int64)
    one, none = np.int64(1), np.int64(0)
    for c in range(lo, hi):
        ctx[0] = c
        for kk in range(k_max + 1):
            ks[0] = kk
            # np.int64, not literals: a literal argument compiles another mixed_step_time_s (~20 s)
            out[c - lo, kk] = mixed_step_time_s(pack, ks, ctx, one, none, none, none, none, none, 0.0)
    return out


@njit(cache=True)
def _goodput_steps(prompt, output, accepted, acc_off, by_position, prior_alpha, prior_strength, lo, price_s,
                   price_ns, prefill, offset, tokens, ns, ks, counts, write):
    """Each request's steps under goodput at batch 1: their count (counts) and, when `write`, the tokens, ns and K
    of each row from offset[i] (build_goodput_step_table)."""
    alpha, remaining = np.zeros(1), np.zeros(1, np.int64)
    for i in range(output.size):
        g = min(output[i], 1)  # the prefill emits the first token
        row = offset[i] if write else 0
        if write:
            tokens[row] = g
            ns[row] = prefill[i]
            ks[row] = 0
        row += 1
        n_acc = n_rej = step = np.int64(0)  # not literal zeros: numba would compile the callees for them too
        while g < output[i]:
            c = prompt[i] + g
            alpha[0] = alpha_estimate(n_acc, n_rej, prior_alpha, prior_strength)
            remaining[0] = output[i] - g
            kk = goodput_shared_k(alpha, remaining, price_s[c - lo])
            d = accepted[acc_off[i] + (g if by_position else step)]
            a = min(d, kk)
            n_acc += a
            if d < kk:
                n_rej += 1
            e = min(a + 1, output[i] - g)
            if write:
                tokens[row] = e
                ns[row] = price_ns[c - lo, kk]
                ks[row] = kk
            g += e
            step += 1
            row += 1
        if not write:
            counts[i] = row
