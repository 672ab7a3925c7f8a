"""What one engine step costs: the one step-pricing implementation (numba), used by every engine and oracle.

`pack_cost(cost, k)` flattens a `CostModel` (lapsbench.models.cost) into a `CostPack` of fixed-dtype arrays, so
the @njit functions here can be called from other compiled code:

    step_time_s(pack, n_decode, context_decode, context_max, n_prefill, prefill_tokens, prefill_tokens_sq,
                prefill_tokens_context, prefill_context, prefill_bucket_ms)
        a step in which every one of `n_decode` requests drafts the pack's k tokens
    mixed_step_time_s(pack, ks, contexts, n_decode, n_prefill, ...)
        a step whose decoding request j drafts ks[j] tokens (K = 0: plain decoding, no draft)
    step_times_s(cost, k, ...)  (Python)
        step_time_s over arrays of steps, for callers outside compiled code
    chunk_bucket_ms(pack, chunk)
        the profile's per-length correction of one prefill chunk ([step] prefill_bucket_ms); a step's
        `prefill_bucket_ms` argument is its Σ over the step's chunks, summed where the chunks are known
    draft_rebuild_s(pack, n, tokens, tokens_sq)
        the draft prefill that rebuilds the draft KV of `n` requests over their whole cached context (added to
        a step's price when speculation turns back on after the draft's memory was freed)
    draft_forward_s, assemble_step_s
        the parts both step prices are made of (one draft forward; verify + drafts + [step] terms + prefill),
        for choosers that price candidate mixed-K steps (lapsbench.models.kchoice.goodput_per_request_k);
        inlined where called; draft_forward_call / assemble_call are the same compiled once and called

A step of a speculative-decoding engine: max K_i draft forwards (forward j over the requests with K_i > j, each
seeing its context plus the j tokens drafted so far), one target forward verifying Σ(K_i + 1) tokens over all
decoding requests, plus the prefill of the requests being prefilled in the same step, plus the profile's
step-level terms (`StepModel`: SD factor, attention terms, CUDA-graph padding, per-step host overhead, the
per-length correction of prefill chunks). With a
fitted profile, a step that mixes prefill and decode is priced as the sum of the two forwards (an upper bound of
a fused chunked-prefill forward; exact at batch size 1) plus the mixed-step overhead. The fixed profile prices
any step as one forward: step_s (+ max K_i draft forwards if it decodes) + prefill_s_per_token per prompt token.

Phase models (PhaseModel, features in lapsbench.models.cost) are evaluated term by term in the coefficient
dict's order, so a profile is priced the same way everywhere; the numpy form `PhaseModel.time_s` stays for
fitting (lapsbench.calibrate).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from lapsbench.errors import LapsbenchError
from lapsbench.models.cost import FEATURES, CostModel, PhaseModel

__all__ = ["CostPack", "pack_cost", "step_time_s", "mixed_step_time_s", "step_times_s", "draft_forward_s",
           "assemble_step_s", "draft_forward_call", "assemble_call", "verify_span", "draft_rebuild_s",
           "chunk_bucket_ms", "bucket_ms_of_chunks"]

# Phase-model slots; term rows: 2 * slot (memory / linear part), 2 * slot + 1 (compute part), 8 + slot (short),
# 12 + slot (wide)
TARGET, TARGET_PREFILL, DRAFT, DRAFT_PREFILL = range(4)
FORMS = {"max": 1, "pnorm": 2}  # anything else is priced as "linear" (0), as PhaseModel.time_s does
MAX_TERMS = len(FEATURES)
ROWS = 16
MAX_BATCH_SIZES = 128


class CostPack(NamedTuple):
    """A CostModel for compiled code (arrays only: it pickles, and numba compiles the engines once)."""

    k: int                # the step's draft length (the maximum, with mixed K)
    fixed: bool           # the fixed profile
    present: np.ndarray   # int64[4]: the phase model of the slot exists
    form: np.ndarray      # int64[4]: 0 linear, 1 max, 2 pnorm
    p: np.ndarray         # float64[4]: pnorm exponent, and (next 4) its inverse
    short_below: np.ndarray  # float64[4]: the short-forward regime below that many tokens (0: none)
    wide_from: np.ndarray    # float64[4]: the wide-batch regime from that many requests (0: none)
    nterms: np.ndarray    # int64[16]: terms per row
    feat: np.ndarray      # int64[16, 8]: feature index of each term
    vals: np.ndarray      # float64[16, 8]: coefficient of each term (ms)
    step: np.ndarray      # float64[7]: [step] sd_factor, decode_ms, prefill_ms, mixed_ms, context, context_max,
    #                       batch_context_max (all 0 but sd_factor 1 without a [step] table)
    has_step: bool
    span: int             # [step] span_multiple (0: none)
    batch_sizes: np.ndarray  # int64: CUDA-graph batch sizes, ascending (empty: none)
    fixed_s: np.ndarray   # float64[3]: fixed profile step_s, draft_step_s, prefill_s_per_token
    bucket_tokens: int    # [step] prefill_bucket_tokens (0: no per-length correction)
    bucket_ms: np.ndarray  # float64: [step] prefill_bucket_ms, entry i for chunks of i·T+1 … (i+1)·T tokens


def _pack_phase(model: PhaseModel | None, slot: int, pack: dict, where: str) -> None:
    if model is None:
        return
    pack["present"][slot] = 1
    form = FORMS.get(model.form, 0)
    pack["form"][slot] = form
    parts = [(2 * slot, model.coef)] + ([(2 * slot + 1, model.coef_compute)] if form else [])
    if model.short_below > 0:
        pack["short_below"][slot] = model.short_below
        parts.append((8 + slot, model.short))
    if model.wide_from > 0:
        pack["wide_from"][slot] = model.wide_from
        parts.append((12 + slot, model.wide))
    for row, coefs in parts:
        for j, (name, value) in enumerate(coefs.items()):
            if name not in FEATURES:
                raise LapsbenchError(f"{where}: {name!r} is not a feature; expected one of {', '.join(FEATURES)}")
            pack["feat"][row, j] = FEATURES.index(name)
            pack["vals"][row, j] = value
        pack["nterms"][row] = len(coefs)
    if form == 2:
        pack["p"][slot] = model.p
        pack["p"][4 + slot] = 1.0 / model.p


def pack_cost(cost: CostModel, k: int) -> CostPack:
    """`cost` for the compiled pricing at draft length `k` (LapsbenchError when the profile cannot price it)."""
    k = int(k)
    pack = dict(present=np.zeros(4, np.int64), form=np.zeros(4, np.int64), p=np.zeros(8),
                short_below=np.zeros(4), wide_from=np.zeros(4), nterms=np.zeros(ROWS, np.int64),
                feat=np.zeros((ROWS, MAX_TERMS), np.int64),
                vals=np.zeros((ROWS, MAX_TERMS)), step=np.array([1.0, 0, 0, 0, 0, 0, 0]), has_step=False, span=0,
                batch_sizes=np.zeros(0, np.int64), fixed_s=np.zeros(3), bucket_tokens=0, bucket_ms=np.zeros(0))
    if cost.is_fixed:
        pack["fixed_s"][:] = (cost.fixed_step_s, cost.fixed_draft_step_s, cost.fixed_prefill_s_per_token)
    else:
        if cost.target is None:
            raise LapsbenchError(f"profile {cost.name}: no target model")
        cost.check_k(k)
        if k > 0 and cost.draft is None:
            raise LapsbenchError(f"profile {cost.name}: speculation k > 0 needs a draft model in the profile")
        for slot, model, label in ((TARGET, cost.target, "target"), (TARGET_PREFILL, cost.target_prefill, "prefill"),
                                   (DRAFT, cost.draft, "draft"), (DRAFT_PREFILL, cost.draft_prefill, "draft prefill")):
            _pack_phase(model, slot, pack, f"profile {cost.name}: {label}")
        st = cost.step
        if st is not None:
            if len(st.batch_sizes) > MAX_BATCH_SIZES:
                raise LapsbenchError(f"profile {cost.name}: step.batch_sizes has {len(st.batch_sizes)} sizes; "
                                     f"expected at most {MAX_BATCH_SIZES}")
            pack.update(has_step=True, span=int(st.span_multiple), batch_sizes=np.array(st.batch_sizes, np.int64),
                        step=np.array([st.sd_factor, st.decode_ms, st.prefill_ms, st.mixed_ms, st.context,
                                       st.context_max, st.batch_context_max], np.float64),
                        bucket_tokens=int(st.prefill_bucket_tokens) if st.prefill_bucket_ms else 0,
                        bucket_ms=np.array(st.prefill_bucket_ms, np.float64))
    return CostPack(k=k, fixed=cost.is_fixed, **pack)


# ------------------------------------------------------------------------------------------------- phases
# The leaf helpers are plain @njit functions, which LLVM inlines; the larger ones are inlined by numba
# (inline="always"). numba runs its untyped pipeline again on, and deep-copies, an inline="always" callee at every
# transitive call site, so inlining the leaves that way too made each price compile ~3x longer (benchmarks/README.md).
@njit(cache=True, _nrt=False)
def _maximum(a, b):
    """np.maximum on one element: the first if larger or NaN, else the second."""
    return a if (a > b or a != a) else b


@njit(cache=True, _nrt=False)
def _linear(pack, row, f):
    """Σ coef · feature over the row's terms, in the profile's order, from 0.0; `f` = the 8 features."""
    total = 0.0
    for j in range(pack.nterms[row]):
        i = pack.feat[row, j]
        v = pack.vals[row, j]
        total = total + (v if i == 0 else v * f[i])
    return total


@njit(cache=True, inline="always")
def _phase_s(pack, slot, batch, tokens, context, tokens_sq, tokens_context, context_max, batch_context_max):
    """PhaseModel.time_s of one forward, in seconds."""
    f = (1.0, batch, tokens, context, tokens_sq, tokens_context, context_max, batch_context_max)
    ms = _linear(pack, 2 * slot, f)
    form = pack.form[slot]
    if form == 1:
        ms = _maximum(ms, _linear(pack, 2 * slot + 1, f))
    elif form == 2:
        p, inv_p = pack.p[slot], pack.p[4 + slot]
        mem = _maximum(ms, 0.0)
        comp = _maximum(_linear(pack, 2 * slot + 1, f), 0.0)
        top = _maximum(_maximum(mem, comp), 1e-300)  # scale out before the power: no overflow
        ms = top * _pow(_pow(mem / top, p) + _pow(comp / top, p), inv_p)
    if pack.short_below[slot] > 0 and tokens < pack.short_below[slot]:
        ms = _linear(pack, 8 + slot, f)
    if pack.wide_from[slot] > 0 and batch >= pack.wide_from[slot]:
        ms = _linear(pack, 12 + slot, f)
    return ms / 1000.0


@njit(cache=True, _nrt=False)
def _pow(x, e):
    if e == 0.5:
        return np.sqrt(x)
    if e == 2.0:
        return x * x
    return x ** e


@njit(cache=True, _nrt=False)
def _padded(pack, n):
    """The CUDA-graph batch size a forward over `n` decoding requests runs at (n itself beyond the sizes)."""
    if n > 0:
        for b in pack.batch_sizes:
            if b >= n:
                return b
    return n


@njit(cache=True, inline="always")
def _draft_s(pack, n, context, context_max):
    """One draft forward (one new token per request) over `n` requests (padded), 0 when n = 0."""
    nf = float(_padded(pack, n))
    c, m = float(context), float(context_max)
    t = _phase_s(pack, DRAFT, nf, nf, c, nf, c, m, nf * m)
    return t if nf > 0 else 0.0


# ------------------------------------------------------------------------------------------------- steps
@njit(cache=True, inline="always")
def verify_span(pack, context_max, k):
    """The attention span of the verify forward: max context, or (span padding) max context + k + 1 rounded up."""
    if pack.span > 0:
        return (context_max + (k + 1) + (pack.span - 1)) // pack.span * pack.span
    return context_max


@njit(cache=True, inline="always")
def _verify_s(pack, n_decode, tokens, context_decode, span):
    """The target forward verifying `tokens` tokens (padding rows included) of `n_decode` requests."""
    nf = float(_padded(pack, n_decode))
    q, c, m = float(tokens), float(context_decode), float(span)
    denom = _maximum(nf, 1.0)
    t = _phase_s(pack, TARGET, nf, q, c, (q * q) / denom, (q * c) / denom, m, nf * m)
    return t if nf > 0 else 0.0


@njit(cache=True, inline="always")
def _decode_terms(pack, t, n_decode, context_decode, span):
    """[step] terms of a step that decodes: sd_factor over the forwards plus attention per cached token."""
    if not pack.has_step or n_decode == 0:
        return t
    nf, c, m = float(_padded(pack, n_decode)), float(context_decode), float(span)
    st = pack.step
    extra = (st[4] * c + st[5] * m) + st[6] * (nf * m)
    return t * st[0] + extra / 1000.0


@njit(cache=True, inline="always")
def _rest_s(pack, t, n_decode, n_prefill, prefill_tokens, prefill_tokens_sq, prefill_tokens_context,
            prefill_context, prefill_bucket_ms):
    """The step's decode time `t` plus its prefill forwards (with the chunks' per-length correction, Σ
    chunk_bucket_ms) and the [step] host overhead."""
    if pack.fixed:
        return t + pack.fixed_s[2] * float(prefill_tokens)
    if n_prefill > 0:
        nf, tok, sq = float(n_prefill), float(prefill_tokens), float(prefill_tokens_sq)
        tc, ctx = float(prefill_tokens_context), float(prefill_context)
        p = _phase_s(pack, TARGET_PREFILL, nf, tok, ctx, sq, tc, 0.0, 0.0)
        if pack.k > 0 and pack.present[DRAFT_PREFILL] != 0:
            p = p + _phase_s(pack, DRAFT_PREFILL, nf, tok, ctx, sq, tc, 0.0, 0.0)
        t = t + (p + prefill_bucket_ms / 1000.0)
    else:
        t = t + 0.0
    if pack.has_step:
        st = pack.step
        if n_decode > 0 and n_prefill > 0:
            over = st[3]
        elif n_decode > 0:
            over = st[1]
        elif n_prefill > 0:
            over = st[2]
        else:
            over = 0.0
        t = t + over / 1000.0
    return t


@njit(cache=True, inline="always")
def _fixed_decode_s(pack, n_decode, n_prefill, drafts):
    busy = n_decode > 0 or n_prefill > 0
    t = pack.fixed_s[0] if busy else 0.0
    return t + (drafts * pack.fixed_s[1] if n_decode > 0 and drafts > 0 else 0.0)


@njit(cache=True, inline="always")
def draft_forward_s(pack, f, n_f, c_f, m_f, span):
    """Draft forward f (0-based) over the `n_f` requests drafting at it (Σ context `c_f`, longest `m_f`, before
    the step): each sees its context plus the f tokens drafted so far; under span padding its attention span is
    the verify forward's `span`."""
    m = span if pack.span > 0 else m_f + f
    return _draft_s(pack, n_f, c_f + f * n_f, m)


@njit(cache=True, inline="always")
def assemble_step_s(pack, n_decode, tokens, k_max, context_decode, span, drafts, n_prefill, prefill_tokens,
                    prefill_tokens_sq, prefill_tokens_context, prefill_context, prefill_bucket_ms):
    """A step's seconds from its decode parts: the target verifying `tokens` query tokens of `n_decode`
    requests (Σ context `context_decode`; CUDA-graph padding rows verify k_max + 1 each), `drafts` = Σ of its
    draft forwards (draft_forward_s), the [step] decode terms, then the prefill chunks and host overhead
    (_rest_s). The fixed profile: step_s + k_max draft forwards."""
    if pack.fixed:
        t = _fixed_decode_s(pack, n_decode, n_prefill, k_max)
    else:
        t = _verify_s(pack, n_decode, tokens + (_padded(pack, n_decode) - n_decode) * (k_max + 1), context_decode,
                      span)
        if k_max > 0:
            t = t + (0.0 + drafts)
        t = _decode_terms(pack, t, n_decode, context_decode, span)
    return _rest_s(pack, t, n_decode, n_prefill, prefill_tokens, prefill_tokens_sq, prefill_tokens_context,
                   prefill_context, prefill_bucket_ms)


# The step prices call the two parts compiled once (draft_forward_call, assemble_call), not inlined: each
# part holds the phase models' evaluation, which inlined into every caller made each caller's compilation
# 15-20 s (on a cold numba cache), and a step price is called once per engine step, where a call costs
# nothing next to the step. The per-request K chooser (lapsbench.models.kchoice) inlines them in its inner
# loop, which prices up to k_max x n candidates a step (a call per candidate made goodput runs ~1.3x slower).
@njit(cache=True)
def draft_forward_call(pack, f, n_f, c_f, m_f, span):
    return draft_forward_s(pack, f, n_f, c_f, m_f, span)


@njit(cache=True)
def assemble_call(pack, n_decode, tokens, k_max, context_decode, span, drafts, n_prefill, prefill_tokens,
                  prefill_tokens_sq, prefill_tokens_context, prefill_context, prefill_bucket_ms):
    return assemble_step_s(pack, n_decode, tokens, k_max, context_decode, span, drafts, n_prefill, prefill_tokens,
                           prefill_tokens_sq, prefill_tokens_context, prefill_context, prefill_bucket_ms)


@njit(cache=True)
def step_time_s(pack, n_decode, context_decode, context_max, n_prefill, prefill_tokens, prefill_tokens_sq,
                prefill_tokens_context, prefill_context, prefill_bucket_ms):
    """Seconds of a step in which each of `n_decode` requests (Σ context `context_decode`, longest
    `context_max`) drafts pack.k tokens, and `n_prefill` requests prefill chunks of `prefill_tokens` tokens in
    all (Σ chunk², Σ chunk · cached before it, Σ cached before, Σ chunk_bucket_ms in ms)."""
    k = pack.k
    span = verify_span(pack, context_max, k)
    drafts = 0.0
    if not pack.fixed:
        for f in range(k):
            drafts += draft_forward_call(pack, f, n_decode, context_decode, span, span)
    return assemble_call(pack, n_decode, n_decode * (k + 1), k, context_decode, span, drafts, n_prefill,
                          prefill_tokens, prefill_tokens_sq, prefill_tokens_context, prefill_context,
                          prefill_bucket_ms)


@njit(cache=True)
def mixed_step_time_s(pack, ks, contexts, n_decode, n_prefill, prefill_tokens, prefill_tokens_sq,
                      prefill_tokens_context, prefill_context, prefill_bucket_ms):
    """step_time_s for a step whose decoding request j (of `n_decode`, context contexts[j]) drafts ks[j] tokens
    (0 <= ks[j] <= pack.k): the target verifies Σ(ks[j] + 1) tokens; draft forward f runs over the requests with
    ks[j] > f; K = 0 costs no draft. With every ks[j] = pack.k it is step_time_s, bit for bit."""
    none = np.int64(0)  # accumulators not from a literal 0: each callee would be compiled for Literal[int](0)
    c_sum, c_max, k_max, tokens = none, none, none, none
    for j in range(n_decode):
        c_sum += contexts[j]
        c_max = max(c_max, contexts[j])
        k_max = max(k_max, ks[j])
        tokens += ks[j] + 1
    span = verify_span(pack, c_max, k_max)
    drafts = 0.0
    if not pack.fixed:
        for f in range(k_max):
            n_f, c_f, m_f = none, none, none
            for j in range(n_decode):
                if ks[j] > f:
                    n_f += 1
                    c_f += contexts[j]
                    m_f = max(m_f, contexts[j])
            drafts += draft_forward_call(pack, f, n_f, c_f, m_f, span)
    return assemble_call(pack, n_decode, tokens, k_max, c_sum, span, drafts, n_prefill, prefill_tokens,
                          prefill_tokens_sq, prefill_tokens_context, prefill_context, prefill_bucket_ms)


@njit(cache=True, _nrt=False)
def _bucket_entry_ms(bucket_tokens, bucket_ms, chunk):
    """Entry i of `bucket_ms` for a chunk of i·bucket_tokens + 1 … (i + 1)·bucket_tokens tokens; 0 without a
    table, for chunk <= 0 and past the table's end."""
    if bucket_tokens <= 0 or chunk <= 0:
        return 0.0
    i = (chunk + bucket_tokens - 1) // bucket_tokens - 1
    return bucket_ms[i] if i < bucket_ms.size else 0.0


@njit(cache=True, _nrt=False)
def chunk_bucket_ms(pack, chunk):
    """The profile's correction (ms) of a prefill chunk of `chunk` tokens: [step] prefill_bucket_ms at the
    chunk's padded length (an engine that pads chunks to multiples of prefill_bucket_tokens and runs each
    padded length off the smooth curve, e.g. by GEMM tile shapes)."""
    return _bucket_entry_ms(pack.bucket_tokens, pack.bucket_ms, chunk)


@njit(cache=True, _nrt=False)
def _bucket_entries_ms(bucket_tokens, bucket_ms, chunks, out):
    for r in range(chunks.size):
        out[r] = _bucket_entry_ms(bucket_tokens, bucket_ms, chunks[r])


@njit(cache=True, _nrt=False)
def draft_rebuild_s(pack, n, tokens, tokens_sq):
    """One draft-prefill forward rebuilding the draft KV of `n` requests over their whole cached context (Σ
    `tokens`, Σ tokens² `tokens_sq`), priced as prefill chunks with nothing cached before them (the draft cannot
    reuse the target's KV; the chunks' per-length correction is of the target and draft prefill together, so
    not charged here); 0 when n = 0, on the fixed profile or without a draft prefill model (whose prefill
    chunks are not charged a draft prefill either)."""
    if n == 0 or pack.fixed or pack.present[DRAFT_PREFILL] == 0:
        return 0.0
    return _phase_s(pack, DRAFT_PREFILL, float(n), float(tokens), 0.0, float(tokens_sq), 0.0, 0.0, 0.0)


@njit(cache=True)
def _step_times(pack, n_decode, context_decode, context_max, n_prefill, prefill_tokens, prefill_tokens_sq,
                prefill_tokens_context, prefill_context, prefill_bucket_ms, out):
    for r in range(out.size):
        out[r] = step_time_s(pack, n_decode[r], context_decode[r], context_max[r], n_prefill[r], prefill_tokens[r],
                             prefill_tokens_sq[r], prefill_tokens_context[r], prefill_context[r],
                             prefill_bucket_ms[r])


def step_times_s(cost: CostModel | CostPack, k: int, n_decode, context_decode, n_prefill=None, prefill_tokens=None,
                 prefill_tokens_sq=None, prefill_tokens_context=None, prefill_context=None,
                 context_max=None, prefill_bucket_ms=None) -> np.ndarray:
    """step_time_s over arrays of steps (broadcast together); `context_max` defaults to `context_decode` (exact
    at batch size 1), the prefill arguments to 0; `prefill_bucket_ms` (Σ chunk_bucket_ms of each step's
    chunks) to that of the one chunk of a step with one prefill, 0 for a step of several (pass it)."""
    pack = cost if isinstance(cost, CostPack) else pack_cost(cost, k)
    context_max = context_decode if context_max is None else context_max
    args = [n_decode, context_decode, context_max] + [0 if a is None else a for a in (
        n_prefill, prefill_tokens, prefill_tokens_sq, prefill_tokens_context, prefill_context)]
    arrays = np.broadcast_arrays(*(np.asarray(a) for a in args))
    shape = arrays[0].shape
    ints = [np.array(a, np.int64).reshape(-1) for a in arrays]
    if prefill_bucket_ms is None:  # the one chunk of a step with one prefill
        bucket = bucket_ms_of_chunks(pack.bucket_tokens, pack.bucket_ms, np.where(ints[3] == 1, ints[4], 0))
    else:
        bucket = np.broadcast_to(np.asarray(prefill_bucket_ms, np.float64), shape).reshape(-1).copy()
    out = np.empty(int(np.prod(shape)), np.float64)
    _step_times(pack, *ints, bucket, out)
    return out.reshape(shape)


def bucket_ms_of_chunks(bucket_tokens: int, bucket_ms, chunks: np.ndarray) -> np.ndarray:
    """chunk_bucket_ms of each chunk length, for callers outside compiled code, from a table (`bucket_ms`,
    entry i for chunks of i·bucket_tokens + 1 … (i + 1)·bucket_tokens tokens; 0 for a length <= 0 and past
    the table)."""
    c = np.asarray(chunks, np.int64)
    out = np.zeros(c.size, np.float64)
    table = np.asarray(bucket_ms, np.float64)
    if bucket_tokens > 0 and table.size:
        _bucket_entries_ms(int(bucket_tokens), table, np.ascontiguousarray(c.reshape(-1)), out)
    return out.reshape(c.shape)
