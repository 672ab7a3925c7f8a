"""Every registered policy's ranking and bookkeeping, compiled (numba), for the compiled engines.

The Python policy classes are the specification: `rank` (keys, lower first, ties by arrival order) and
`observe`. This module restates them as three functions over plain arrays, dispatched on a policy code, so
that a whole run — every step's choice — happens inside compiled code (lapsbench/engine_compiled.py at
batch size 1, lapsbench/batching_compiled.py batched). A policy opts in by returning a `PolicyKernel` from
`Policy.kernel(state)` after `prepare`; one that returns None runs on the Python engines. The compiled
engines are checked against the step-by-step reference engines, which call the Python classes, for every
policy (tests/test_batching.py, tests/test_engine_properties.py).

State tuple `S` (EngineState's arrays, mutated in place by the engine):
    (arrival_s f8, prompt_tokens i8, output_tokens i8, generated i8, steps i8, decode_steps i8,
     attained_s f8, last_service_s f8, done b1)

Policy tuple `P` (a `PolicyKernel`): code, float / int parameters, per-request static values `fs`,
two auxiliary tables, per-request mutable ints `mi` and floats `mf`, global mutable ints `g`, and the
batch-1 step table's offsets and cumulative ns (srpt-sd's true future).

Functions (all @njit):
    prerank(P, S, active, na, now) -> bool   called wherever the Python engine calls `rank` (it may hold
                                              side effects, e.g. LTR's starvation guard); True = every key
                                              may have changed
    key(P, S, i) -> (k0, k1, k2)             the rank keys of request i (float64; unused keys are 0)
    observe(P, S, served, m, end) -> bool     after one engine step that served served[:m] (ascending
                                              index) and ended at `end` seconds; the
                                              state is already updated for the step; True = every key may
                                              have changed
Keys of a request change only through its own service (observe) or a True return, so engines may cache
them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

FCFS, SJF, SRPT, LAS, RR, SSJF, SRPT_SD, MLFQ, SKIP_JOIN, LTR, LAPS_SD = range(11)
UNIT_STEPS, UNIT_TOKENS, UNIT_SECONDS = 0, 1, 2
UNIT_CODE = {"steps": UNIT_STEPS, "tokens": UNIT_TOKENS, "seconds": UNIT_SECONDS}

_EMPTY_F1 = np.zeros(0, np.float64)
_EMPTY_I1 = np.zeros(0, np.int64)


class PolicyKernel(NamedTuple):
    code: int
    fp: np.ndarray   # float64 parameters
    ip: np.ndarray   # int64 parameters
    fs: np.ndarray   # float64 (n, F) per-request static values
    fa: np.ndarray   # float64 auxiliary table (quanta, queue bounds)
    ctx: np.ndarray  # float64 table indexed by context length (batch-1 step costs)
    mi: np.ndarray   # int64 (n, M) per-request mutable state
    mf: np.ndarray   # float64 (n, M) per-request mutable state
    g: np.ndarray    # int64 global mutable state (sequence counters, iterations, flags)
    t_off: np.ndarray  # int64 step-table offsets (srpt-sd), else empty
    t_cum: np.ndarray  # int64 step-table cumulative ns (srpt-sd), else empty


def kernel(code: int, n: int, fp=(), ip=(), fs=None, fa=None, ctx=None, mi_cols: int = 0, mf_cols: int = 0,
           g_size: int = 4, t_off=None, t_cum=None) -> PolicyKernel:
    """Build a PolicyKernel with fixed dtypes (so numba compiles each engine once)."""
    def f1(a):
        return _EMPTY_F1 if a is None else np.ascontiguousarray(a, np.float64)

    def i1(a):
        return _EMPTY_I1 if a is None else np.ascontiguousarray(a, np.int64)

    fs = np.zeros((n, 1)) if fs is None else np.ascontiguousarray(np.asarray(fs, np.float64).reshape(n, -1))
    return PolicyKernel(int(code), np.array(fp, np.float64).reshape(-1), np.array(ip, np.int64).reshape(-1), fs,
                        f1(fa), f1(ctx), np.zeros((n, max(mi_cols, 1)), np.int64),
                        np.zeros((n, max(mf_cols, 1)), np.float64), np.zeros(g_size, np.int64), i1(t_off),
                        i1(t_cum))


def state_tuple(state) -> tuple:
    """EngineState's arrays in the layout the compiled functions take (views: the engine writes through)."""
    for name in ("generated", "steps", "decode_steps", "preemptions"):
        assert getattr(state, name).dtype == np.int64
    return (np.ascontiguousarray(state.arrival_s, np.float64), np.ascontiguousarray(state.prompt_tokens, np.int64),
            np.ascontiguousarray(state.output_tokens, np.int64), state.generated, state.steps, state.decode_steps,
            state.attained_s, state.last_service_s, state.done)


@njit(cache=True)
def _attained(S, unit, i):
    if unit == UNIT_STEPS:
        return float(S[4][i])
    if unit == UNIT_TOKENS:
        return float(S[3][i])
    return S[6][i]


# --------------------------------------------------------------------------------------------- laps-sd
@njit(cache=True)
def _searchsorted_right(a, x):
    lo, hi = 0, a.size
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True)
def _searchsorted_left(a, x):
    lo, hi = 0, a.size
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _laps_queue(P, S, i):
    unit = P.ip[0]
    if unit == UNIT_STEPS:
        return _searchsorted_right(P.fa, float(S[4][i]))
    if unit == UNIT_TOKENS:
        return _searchsorted_right(P.fa, float(S[3][i]))
    return _searchsorted_right(P.fa, S[6][i])


@njit(cache=True)
def _laps_estimate(P, S, i):
    """Estimated remaining time T = L·(k·T_draft + T_verify) / (k·A + 1) (LAPSSD.estimated_remaining_s)."""
    k = P.ip[5]
    m, w, min_left = P.fp[1], P.fp[2], P.fp[0]
    left = P.fs[i, 0] - float(S[3][i])
    L = left if left > min_left else min_left
    decode = S[5][i]
    accepted = S[3][i] - 1 - decode
    if accepted < 0:
        accepted = 0
    trials = float(k * decode)
    if trials + w > 0:
        a = (float(accepted) + m * w) / (trials + w)
        if a > 1.0:
            a = 1.0
    else:
        a = m
    factor = P.ctx[S[1][i] + S[3][i]]
    return L * factor / (k * a + 1)


@njit(cache=True)
def _running_acceptance(generated, spec_steps, k):
    if k == 0:
        return 0.0
    a = generated - 1 - spec_steps
    if a < 0:
        a = 0
    return a / (k * spec_steps)


@njit(cache=True)
def _laps_observe(P, S, r):
    window, min_steps, k = P.ip[3], P.ip[4], P.ip[5]
    w = window + 1
    s = S[5][r]
    if s < 1:
        return
    g = S[3][r]
    P.mi[r, 1 + s % w] = g
    if P.mi[r, 0] != 0 or s < min_steps or s < w:
        return
    a_now = _running_acceptance(g, s, k)
    a_then = _running_acceptance(P.mi[r, 1 + (s - window) % w], s - window, k)
    if abs(a_now - a_then) <= P.fp[3] * a_now:
        P.mi[r, 0] = 1


# ------------------------------------------------------------------------------------------ mlfq family
@njit(cache=True)
def _enter(P, r, level, service, t):
    P.g[0] += 1
    P.mi[r, 0] = level
    P.mi[r, 1] = P.g[0]
    P.mf[r, 0] = service
    P.mf[r, 1] = t


@njit(cache=True)
def _mlfq_observe(P, S, served, m, end):
    unit, period = P.ip[0], P.ip[2]
    base, ratio, idle_s = P.fp[0], P.fp[1], P.fp[2]
    for j in range(m):
        r = served[j]
        service = _attained(S, unit, r)
        if service - P.mf[r, 0] >= base * ratio ** float(P.mi[r, 0]):
            _enter(P, r, P.mi[r, 0] + 1, service, end)
    before = P.g[1]
    P.g[1] += 1
    dirty = False
    if idle_s > 0 and P.g[1] // period > before // period:
        arrival, last, done = S[0], S[7], S[8]
        for r in range(arrival.size):
            if arrival[r] <= end and not done[r] and end - last[r] >= idle_s and P.mi[r, 0] > 0:
                _enter(P, r, 0, _attained(S, unit, r), end)
                dirty = True
    return dirty


@njit(cache=True)
def _skip_join_observe(P, S, served, m, end):
    unit, levels = P.ip[0], P.ip[1]
    q = P.fa
    for j in range(m):
        r = served[j]
        lv = P.mi[r, 0]
        service = _attained(S, unit, r)
        if lv < levels - 1 and service - P.mf[r, 0] >= q[lv]:
            nxt = lv + 1
            if unit == UNIT_SECONDS and not S[8][r]:
                step = P.ctx[S[1][r] + S[3][r]]
                skip = _searchsorted_left(q, step)
                if skip > nxt:
                    nxt = skip
            _enter(P, r, min(nxt, levels - 1), service, end)
    dirty = False
    limit = P.fp[0]
    if limit > 0:
        arrival, last, done = S[0], S[7], S[8]
        for r in range(arrival.size):
            if arrival[r] <= end and not done[r] and end - last[r] >= limit and P.mi[r, 0] > 0:
                _enter(P, r, 0, _attained(S, unit, r), end)
                dirty = True
    return dirty


# --------------------------------------------------------------------------------------------- contract
@njit(cache=True)
def prerank(P, S, active, na, now):
    code = P.code
    if code == SSJF:
        # SSJF's starvation guard: the longest-waiting queued request decides the order of this decision
        starving = 0
        if P.ip[0] != 0 and na > 1:
            arrival, steps = S[0], S[4]
            oldest = -1
            for j in range(na):
                i = active[j]
                if steps[i] == 0 and (oldest < 0 or arrival[i] < arrival[oldest]):
                    oldest = i
            if oldest >= 0:
                waited = now - arrival[oldest]
                if waited > P.fp[0] or (P.ip[1] != 0 and waited > P.fp[1] * P.fs[oldest, 1]):
                    starving = 1
        changed = starving != P.g[0]
        P.g[0] = starving
        return changed
    if code == LTR:
        starvation, boost = P.ip[0], P.ip[1]
        it = P.g[0]
        fired = False
        for j in range(na):
            i = active[j]
            if P.mi[i, 0] < 0:
                P.mi[i, 0] = it
        if starvation <= 0:
            return False
        for j in range(na):
            i = active[j]
            if it - P.mi[i, 0] >= starvation and P.mi[i, 1] == 0:
                P.g[1] += 1
                P.mi[i, 1] = boost
                P.mi[i, 2] = P.g[1]
                fired = True
        return fired
    return False


@njit(cache=True)
def key(P, S, i):
    code = P.code
    if code == FCFS:
        return S[0][i], 0.0, 0.0
    if code == SJF:
        return float(S[2][i]), 0.0, 0.0
    if code == SRPT:
        return float(S[2][i] - S[3][i]), 0.0, 0.0
    if code == LAS:
        return _attained(S, P.ip[0], i), 0.0, 0.0
    if code == RR:
        return S[7][i], 0.0, 0.0
    if code == SSJF:
        if P.g[0] != 0:
            return S[0][i], 0.0, 0.0
        return P.fs[i, 0], 0.0, 0.0
    if code == SRPT_SD:
        s = S[4][i]
        total = P.t_cum[P.t_off[i + 1] - 1]
        n_steps = P.t_off[i + 1] - P.t_off[i]
        if s > n_steps:
            s = n_steps
        done_ns = P.t_cum[P.t_off[i] + s - 1] if s > 0 else 0
        return float(total - done_ns), 0.0, 0.0
    if code == MLFQ:
        level, seq = P.mi[i, 0], P.mi[i, 1]
        if P.ip[1] == 1:  # fifo
            return float(level), P.mf[i, 1], float(seq)
        return float(level), 1.0 if seq == 0 else 0.0, float(-seq)
    if code == SKIP_JOIN:
        return float(P.mi[i, 0]), P.mf[i, 1], float(P.mi[i, 1])
    if code == LTR:
        if P.mi[i, 1] > 0:
            return 0.0, float(P.mi[i, 2]), P.fs[i, 0]
        return 1.0, 0.0, P.fs[i, 0]
    # LAPS_SD
    q = _laps_queue(P, S, i)
    perceptible = P.mi[i, 0] != 0
    last = _laps_estimate(P, S, i) if perceptible else S[0][i]
    if P.ip[1] == 0:  # queue placement
        return float(q), 0.0 if perceptible else 1.0, last
    g = P.ip[2]
    cls = 2 * g + 1 if perceptible else 2 * min(q, g) + 2 * max(q - g, 0) + (1 if q > g else 0)
    return float(cls), last, 0.0


@njit(cache=True)
def observe(P, S, served, m, end):
    code = P.code
    if code == MLFQ:
        return _mlfq_observe(P, S, served, m, end)
    if code == SKIP_JOIN:
        return _skip_join_observe(P, S, served, m, end)
    if code == LTR:
        P.g[0] += 1
        for j in range(m):
            r = served[j]
            if P.mi[r, 1] > 0:
                P.mi[r, 1] = max(0, P.mi[r, 1] - 1)
            P.mi[r, 0] = P.g[0]
        return False
    if code == LAPS_SD:
        for j in range(m):
            _laps_observe(P, S, served[j])
        return False
    return False


@njit(cache=True)
def key_less(a0, a1, a2, ai, b0, b1, b2, bi):
    """Lexicographic (keys, index) order: does request a rank before request b?"""
    if a0 != b0:
        return a0 < b0
    if a1 != b1:
        return a1 < b1
    if a2 != b2:
        return a2 < b2
    return ai < bi
