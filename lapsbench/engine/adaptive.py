"""Adaptive draft length in the batched engine (`[speculation] adaptive`, docs/speculation.md): the `choose_k`
phase of a step (one K shared by the step's decoding rows, or one per row for per-request goodput, from
lapsbench.models.kchoice), its mixed-K price, the tokens drawn at that K from the replication's acceptance draws
at the maximum k (common random numbers across K: min(accepted, K) + 1), the per-request acceptance counters
goodput reads, and the K statistics; and off-under-load with `free_draft_memory = true`: SD switched on or off
before admission, the KV capacity it leaves the target, and the draft KV rebuilt when SD turns back on
(docs/speculation.md §5).

A fixed-K run never enters these functions (the engine keeps its step-table path, bit for bit)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from lapsbench.engine.batched_state import ERR_TABLE, OK
from lapsbench.engine.batched_step import prefill_sums
from lapsbench.errors import LapsbenchError
from lapsbench.models.acceptance import accepted_table
from lapsbench.models.kchoice import (
    FIXED,
    GOODPUT,
    AdaptivePack,
    alpha_estimate,
    choose_shared_k,
    goodput_per_request_k,
)
from lapsbench.models.pricing import CostPack, draft_rebuild_s, mixed_step_time_s

# Adapt.switch (free_draft_memory): SD is off this step, SD's current on-period (= the times it turned back on),
# the requests whose draft KV was rebuilt and the tokens the draft prefilled for them
SD_OFF, EPOCH, REBUILT, REBUILT_TOKENS = 0, 1, 2, 3


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
    # off-under-load with free_draft_memory (P.free_draft; otherwise unused)
    cap_on: float            # KV capacity with SD on (the configured one: target + draft KV per token)
    cap_off: float           # ... with SD off, the draft's memory returned (sd_off_capacity)
    pack_off: CostPack       # the step pricing with the draft idle: no draft prefill of the prefill chunks
    switch: np.ndarray       # int64 [SD_OFF, EPOCH, REBUILT, REBUILT_TOKENS] (above)
    draft_epoch: np.ndarray  # int64 per request: the on-period its draft KV was built in (-1: none)


def draft_kv_bytes(cost) -> tuple[int, int]:
    """KV bytes per token of the target (the profile's kv_bytes_per_token) and of the draft (its shape in
    lapsbench.calibrate.models.MODELS); LapsbenchError when the profile cannot say (the fixed profile, no KV bytes,
    a draft of unknown shape)."""
    from lapsbench.calibrate.models import MODELS

    key = "speculation.adaptive.free_draft_memory: true"
    if cost.is_fixed:
        raise LapsbenchError(f"{key} needs the KV bytes per token of target and draft, which the fixed profile "
                             "has not; expected a measured profile (model.profile) or free_draft_memory = false")
    draft = cost.meta.get("draft", "")
    if cost.kv_bytes_per_token <= 0 or draft not in MODELS:
        what = "no kv_bytes_per_token" if cost.kv_bytes_per_token <= 0 else f"draft {draft!r} of unknown shape"
        raise LapsbenchError(f"{key} needs the KV bytes per token of target and draft; profile {cost.name} has "
                             f"{what} (known drafts: {', '.join(MODELS)}); expected such a profile or "
                             "free_draft_memory = false")
    return int(cost.kv_bytes_per_token), MODELS[draft].kv_bytes_per_token


def sd_off_capacity(cost, capacity: float, block: int) -> float:
    """The KV capacity while SD is off with the draft's memory freed: `capacity` (tokens of target + draft KV)
    · (target + draft bytes per token) / target bytes, rounded down to the block; unlimited stays unlimited."""
    target, draft = draft_kv_bytes(cost)
    if not np.isfinite(capacity):
        return float(capacity)
    return float(int(capacity) * (target + draft) // target // block * block)


def new_adapt(ctx, output_tokens: np.ndarray, pack: CostPack) -> Adapt:
    """The engine's adaptive state for one run of `ctx` (a RunContext with batching; inert arrays when its
    adaptive choice is None or the fixed k); `pack`: the run's step pricing (pack_cost(ctx.cost, ctx.k))."""
    P, acceptance, cfg = ctx.adaptive, ctx.acceptance, ctx.batching
    b, n = max(cfg.max_batch, 1), output_tokens.size
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
    cap = float(cfg.kv_capacity_tokens)
    cap_off = sd_off_capacity(ctx.cost, cap, cfg.block_size) if P.free_draft else cap
    return Adapt(on, P, acc, np.ascontiguousarray(off, np.int64), by_position, *per_request, *per_row,
                 np.zeros(P.k_max + 1), np.zeros(b, np.int64), np.zeros(b), np.zeros((3, max(P.k_max, 1)), np.int64),
                 cap, cap_off, pack._replace(k=0), np.zeros(4, np.int64), np.full(n, -1, np.int64))


@njit(cache=True, _nrt=False)
def switch_draft_memory(M, W, A, L):
    """Off-under-load with free_draft_memory, before admission (the capacity depends on it): SD is off this step
    while at least `off_batch` present requests are resident with their prefill complete (they decode unless
    the scheduler leaves them out), on otherwise; the KV capacity admission fills is A.cap_off while off, A.cap_on
    while on. Turning on starts a new on-period: every draft KV built before was freed."""
    n = np.int64(0)
    for j in range(L.na):
        i = W.active[j]
        if M.resident[i] and M.prefilled[i] >= M.target[i]:
            n += 1
    off = n >= A.P.off_batch
    if not off and A.switch[SD_OFF] != 0:
        A.switch[EPOCH] += 1
    A.switch[SD_OFF] = 1 if off else 0
    L.kv_cap = A.cap_off if off else A.cap_on


@njit(cache=True, _nrt=False)
def draft_rebuild(R, M, W, A, pack, nm):
    """SD on (free_draft_memory): the seconds of the draft prefill that first rebuilds the draft KV of the step's
    members whose draft holds none from this on-period, each over what the target has cached for it (a decoding
    member: prompt + generated; a prefilling one: its prefill so far; static padding: none); every member's
    draft KV is then current."""
    n = tok = sq = np.int64(0)  # not literal zeros (batched_step.prefill_sums)
    epoch = A.switch[EPOCH]
    for j in range(nm):
        i = W.members[j]
        if W.chunks[j] == 0:
            if R.done[i]:
                continue
            cached = R.prompt_tokens[i] + R.generated[i]
        else:
            cached = M.prefilled[i]
        if A.draft_epoch[i] != epoch and cached > 0:
            n += 1
            tok += cached
            sq += cached * cached
        A.draft_epoch[i] = epoch
    A.switch[REBUILT] += n
    A.switch[REBUILT_TOKENS] += tok
    return draft_rebuild_s(pack, n, tok, sq)


def draft_memory_stats(A: Adapt, n: int) -> dict[str, float]:
    """free_draft_memory's engine statistics: times SD turned back on, draft KV rebuilds and the tokens the draft
    prefilled for them, per request."""
    return {"sd_turned_on": float(A.switch[EPOCH]), "draft_rebuilds_mean": int(A.switch[REBUILT]) / max(n, 1),
            "draft_rebuild_tokens_mean": int(A.switch[REBUILT_TOKENS]) / max(n, 1)}


@njit(cache=True, inline="always")
def _decode_rows(R, M, W, A, pack, nm):
    """Gather the step's decoding rows (padding included) into A.ctx / A.alpha / A.remaining and take its prefill
    sums; returns (n_dec, (n_pf, c_sum, c_sq, c_before, before_sum, bucket))."""
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
    return n_dec, prefill_sums(M, W, nm, pack)


@njit(cache=True, _nrt=False)
def _spread_ks(W, A, nm, n_dec):
    """A.ks from per decoding row to per member (prefill chunks: 0)."""
    d = n_dec  # decoding row d is the d-th member with no chunk (d <= j): spread in place, from the end
    for j in range(nm - 1, -1, -1):
        if W.chunks[j] == 0:
            d -= 1
            A.ks[j] = A.ks[d]
        else:
            A.ks[j] = 0


@njit(cache=True, _nrt=False)
def choose_and_price(R, M, W, A, pack, nm):
    """The `choose_k` phase and the step's mixed-K price, K per member into A.ks (prefill chunks: 0); returns the
    step's time without stalls. One K for every decoding row (kchoice.choose_shared_k over the n decoding rows;
    goodput prices the step at each K = 0..k_max), or, for goodput with per_request, a K per decoding row
    (kchoice.goodput_per_request_k); under free_draft_memory the K of switch_draft_memory's decision, priced
    without draft prefill while off and with the draft rebuild while on."""
    n_dec, pf = _decode_rows(R, M, W, A, pack, nm)
    n_pf, c_sum, c_sq, c_before, before_sum, bucket = pf
    if A.P.free_draft:  # K = 0 while off (the draft idle, its memory the target's), k while on
        off = A.switch[SD_OFF] != 0
        for j in range(n_dec):
            A.ks[j] = 0 if off else A.P.k
        if off:
            t = mixed_step_time_s(A.pack_off, A.ks, A.ctx, n_dec, n_pf, c_sum, c_sq, c_before, before_sum,
                                  bucket)
        else:
            t = mixed_step_time_s(pack, A.ks, A.ctx, n_dec, n_pf, c_sum, c_sq, c_before, before_sum, bucket)
            t = t + draft_rebuild(R, M, W, A, pack, nm)
        _spread_ks(W, A, nm, n_dec)
        return t
    if A.P.code == GOODPUT and A.P.per_request:
        goodput_per_request_k(pack, A.alpha, A.remaining, A.ctx, n_dec, A.P.k_max,
                              pf, A.rows, A.power, A.pos, A.ks)
    else:
        if A.P.code == GOODPUT:
            for kk in range(A.step_s.size):
                for j in range(n_dec):
                    A.ks[j] = kk
                A.step_s[kk] = mixed_step_time_s(pack, A.ks, A.ctx, n_dec, n_pf, c_sum, c_sq, c_before, before_sum,
                                                 bucket)
        kk = choose_shared_k(A.P, n_dec, A.alpha, A.remaining, A.step_s)
        for j in range(n_dec):
            A.ks[j] = kk
    t = mixed_step_time_s(pack, A.ks, A.ctx, n_dec, n_pf, c_sum, c_sq, c_before, before_sum, bucket)
    _spread_ks(W, A, nm, n_dec)
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
