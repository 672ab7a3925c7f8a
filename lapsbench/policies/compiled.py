"""Every registered policy's ranking and bookkeeping, compiled (numba), for the compiled engines.

The Python policy classes are the specification: `rank` (keys, lower first, ties by arrival order) and
`observe`. This module restates them as three functions over plain arrays, dispatched on a policy code, so
that a whole run — every step's choice — happens inside compiled code (lapsbench/engine/batch1.py at
batch size 1, lapsbench/engine/batched.py batched, through lapsbench.schedulers.dispatch). A policy returns
its `PolicyKernel` from `Policy.kernel(state)` after `prepare`. The compiled
engines are checked against the step-by-step reference engines, which call the Python classes, for every
policy (tests/test_batching.py, tests/test_engine_properties.py).

Requests `S`: a lapsbench.schedulers.api.RequestView (named per-request arrays, updated in place by the engine).

Policy tuple `P` (a `PolicyKernel`): a code, float parameters `fp`, int parameters `ip` (whose slots from
`G` on are the policy's global mutable counters), per-request floats `F` and ints `I` (static values and
mutable state, one row per request) and an auxiliary float table `T` (queue bounds, quanta, step costs by
context, a step table). Few arrays on purpose: every array passed to a compiled call costs time.

Functions (all @njit; `code` = P.code, passed on its own so that an engine specialised on it with
`numba.literally` gets each policy's branch alone, small enough to inline — a call that is not inlined
costs ~100 ns in argument handling, more than a step's work):
    prerank(code, P, S, active, na, now) -> bool
        called wherever the Python engine calls `rank` (it may have side effects, e.g. LTR's starvation
        guard); True = every key may have changed
    key(code, P, S, i) -> (k0, k1, k2)
        the rank keys of request i (float64; unused keys are 0)
    observe(code, P, S, served, m, end) -> bool
        after one engine step that served served[:m] (ascending index) and ended at `end` seconds, the
        state already updated for the step; True = every key may have changed
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
G = 8  # ip[G], ip[G + 1], ...: global mutable counters (sequence numbers, iterations, flags)


class PolicyKernel(NamedTuple):
    code: int
    fp: np.ndarray  # float64 parameters
    ip: np.ndarray  # int64 parameters, then global mutable counters from index G
    F: np.ndarray   # float64 (n, cols): per-request values
    I: np.ndarray   # int64 (n, cols): per-request values
    T: np.ndarray   # float64 auxiliary table


def kernel(code: int, n: int, fp=(), ip=(), F=None, I_cols: int = 1, T=None) -> PolicyKernel:  # noqa: N803
    """Build a PolicyKernel with fixed dtypes (so numba compiles each engine once)."""
    ints = np.zeros(G + 4, np.int64)
    ints[:len(ip)] = ip
    F = np.zeros((n, 1)) if F is None else np.ascontiguousarray(np.asarray(F, np.float64).reshape(n, -1))
    T = np.zeros(1) if T is None or np.size(T) == 0 else np.ascontiguousarray(T, np.float64)
    return PolicyKernel(int(code), np.array(fp, np.float64).reshape(-1) if len(fp) else np.zeros(1), ints, F,
                        np.zeros((n, max(I_cols, 1)), np.int64), T)


@njit(cache=True, inline="always")
def _attained(S, unit, i):
    if unit == UNIT_STEPS:
        return float(S.steps[i])
    if unit == UNIT_TOKENS:
        return float(S.generated[i])
    return S.attained_s[i]


# --------------------------------------------------------------------------------------------- laps-sd
# fp: min_remaining_tokens, prior mean, prior strength, tolerance
# ip: unit, placement (0 queue, 1 global-srpt, 2 perceived), global_after_queue, window, min_steps, k, number
# of bounds. F: predicted tokens; I: perceptible, then the ring of generated tokens (window + 1); T: bounds,
# then the step factor by context
@njit(cache=True, inline="always")
def _laps_estimate(P, S, i):
    """(T seconds, remaining service in the ladder's unit), as LAPSSD.estimated_remaining_s / _remaining."""
    ip, fp = P.ip, P.fp
    k = ip[5]
    m, w, min_left = fp[1], fp[2], fp[0]
    generated, decode = S.generated[i], S.decode_steps[i]
    left = P.F[i, 0] - float(generated)
    L = left if left > min_left else min_left
    accepted = max(generated - 1 - decode, 0)
    trials = float(k * decode)
    a = min((float(accepted) + m * w) / (trials + w), 1.0) if trials + w > 0 else m
    per = k * a + 1
    t = L * P.T[ip[6] + S.prompt_tokens[i] + generated] / per
    if ip[0] == UNIT_SECONDS:
        return t, t
    if ip[0] == UNIT_STEPS:
        return t, L / per
    return t, L


@njit(cache=True, inline="always")
def _laps_key(P, S, i):
    ip = P.ip
    nb = ip[6]
    q = np.searchsorted(P.T[:nb], _attained(S, ip[0], i), side="right")
    perceptible = P.I[i, 0] != 0
    if ip[1] == 1:  # global-srpt: levels 0..g by attained service, then one class by estimate
        g = ip[2]
        if perceptible or q > g:
            return float(g + 1), _laps_estimate(P, S, i)[0], 0.0
        return float(q), S.arrival_s[i], 0.0
    if not perceptible:
        return float(q), 1.0, S.arrival_s[i]
    t, remaining = _laps_estimate(P, S, i)
    if ip[1] == 2:  # perceived: the level of the estimated remaining service
        q = np.searchsorted(P.T[:nb], remaining, side="right")
    return float(q), 0.0, t


@njit(cache=True, inline="always")
def _running_acceptance(generated, spec_steps, k):
    if k == 0:
        return 0.0
    return max(generated - 1 - spec_steps, 0) / (k * spec_steps)


@njit(cache=True, inline="always")
def _laps_observe(P, S, served, m):
    window, min_steps, k = P.ip[3], P.ip[4], P.ip[5]
    w = window + 1
    for j in range(m):
        r = served[j]
        s = S.decode_steps[r]
        if s < 1 or P.I[r, 0] != 0:  # the prefill step; or perceptible already (for good: the ring is unread)
            continue
        g = S.generated[r]
        P.I[r, 1 + s % w] = g
        if s < min_steps or s < w:
            continue
        a_now = _running_acceptance(g, s, k)
        a_then = _running_acceptance(P.I[r, 1 + (s - window) % w], s - window, k)
        if abs(a_now - a_then) <= P.fp[3] * a_now:
            P.I[r, 0] = 1


# ------------------------------------------------------------------------------------------ mlfq family
# I: level, entry sequence number; F: attained service at entry, entry time; ip[G]: the sequence counter
@njit(cache=True, inline="always")
def _enter(P, r, level, service, t):
    P.ip[G] += 1
    P.I[r, 0] = level
    P.I[r, 1] = P.ip[G]
    P.F[r, 0] = service
    P.F[r, 1] = t


@njit(cache=True, inline="always")
def _promote_idle(P, S, unit, end, idle_s):
    """Requests present and idle for at least idle_s go back to level 0 (in index order)."""
    arrival, last, done = S.arrival_s, S.last_service_s, S.done
    promoted = False
    for r in range(arrival.size):
        if arrival[r] <= end and not done[r] and end - last[r] >= idle_s and P.I[r, 0] > 0:
            _enter(P, r, 0, _attained(S, unit, r), end)
            promoted = True
    return promoted


# mlfq — fp: promote_idle_s; ip: unit, fifo, promote_period; ip[G + 1]: iterations; T: quantum by level,
# computed by numpy (numba's `**` may differ from numpy's in the last bit); past the table's end the quantum
# stays at its last, astronomically large, value
@njit(cache=True, inline="always")
def _mlfq_observe(P, S, served, m, end):
    unit, period = P.ip[0], P.ip[2]
    idle_s = P.fp[0]
    for j in range(m):
        r = served[j]
        service = _attained(S, unit, r)
        if service - P.F[r, 0] >= P.T[min(P.I[r, 0], P.T.size - 1)]:
            _enter(P, r, P.I[r, 0] + 1, service, end)
    before = P.ip[G + 1]
    P.ip[G + 1] += 1
    if idle_s > 0 and P.ip[G + 1] // period > before // period:
        return _promote_idle(P, S, unit, end, idle_s)
    return False


# skip-join — fp: starve_limit_s; ip: unit, levels; T: quanta (levels), then batch-1 step time by context
@njit(cache=True, inline="always")
def _skip_join_observe(P, S, served, m, end):
    unit, levels = P.ip[0], P.ip[1]
    q = P.T
    for j in range(m):
        r = served[j]
        lv = P.I[r, 0]
        service = _attained(S, unit, r)
        if lv < levels - 1 and service - P.F[r, 0] >= q[lv]:
            nxt = lv + 1
            if unit == UNIT_SECONDS and not S.done[r]:
                ctx = S.prompt_tokens[r] + S.generated[r]
                nxt = max(nxt, np.searchsorted(q[:levels], q[levels + ctx], side="left"))
            _enter(P, r, min(nxt, levels - 1), service, end)
    if P.fp[0] > 0:
        return _promote_idle(P, S, unit, end, P.fp[0])
    return False


# ------------------------------------------------------------------------------------------------- ltr
# ip: starvation_steps, boost_steps; ip[G]: iterations, ip[G + 1]: boost sequence counter
# F: score; I: iteration last served or admitted (-1 = not yet), boost steps left, boost sequence number
@njit(cache=True, inline="always")
def _ltr_guard(P, active, na):
    starvation, boost = P.ip[0], P.ip[1]
    it = P.ip[G]
    for j in range(na):
        i = active[j]
        if P.I[i, 0] < 0:
            P.I[i, 0] = it
    fired = False
    if starvation <= 0:
        return fired
    for j in range(na):
        i = active[j]
        if it - P.I[i, 0] >= starvation and P.I[i, 1] == 0:
            P.ip[G + 1] += 1
            P.I[i, 1] = boost
            P.I[i, 2] = P.ip[G + 1]
            fired = True
    return fired


# ------------------------------------------------------------------------------------------------ ssjf
# fp: starvation_s, starvation_factor; ip: guard on, true service known; ip[G]: starving flag
# F: predicted key, true service time
@njit(cache=True, inline="always")
def _ssjf_guard(P, S, active, na, now):
    starving = 0
    if P.ip[0] != 0 and na > 1:
        arrival, steps = S.arrival_s, S.steps
        oldest = -1
        for j in range(na):
            i = active[j]
            if steps[i] == 0 and (oldest < 0 or arrival[i] < arrival[oldest]):
                oldest = i
        if oldest >= 0:
            waited = now - arrival[oldest]
            if waited > P.fp[0] or (P.ip[1] != 0 and waited > P.fp[1] * P.F[oldest, 1]):
                starving = 1
    changed = starving != P.ip[G]
    P.ip[G] = starving
    return changed


# --------------------------------------------------------------------------------------------- contract
@njit(cache=True)
def prerank(code, P, S, active, na, now):
    if code == SSJF:
        return _ssjf_guard(P, S, active, na, now)
    if code == LTR:
        return _ltr_guard(P, active, na)
    return False


@njit(cache=True)
def key(code, P, S, i):
    if code == FCFS:
        return S.arrival_s[i], 0.0, 0.0
    if code == SJF:
        return float(S.output_tokens[i]), 0.0, 0.0
    if code == SRPT:
        return float(S.output_tokens[i] - S.generated[i]), 0.0, 0.0
    if code == LAS:
        return _attained(S, P.ip[0], i), 0.0, 0.0
    if code == RR:
        return S.last_service_s[i], 0.0, 0.0
    if code == SSJF:
        return (S.arrival_s[i] if P.ip[G] != 0 else P.F[i, 0]), 0.0, 0.0
    if code == SRPT_SD:
        # I: step-table offset, steps; T: the table's cumulative ns (exact in float64 below 2^53 ns)
        s = min(S.steps[i], P.I[i, 1])
        first = P.I[i, 0]
        done_ns = P.T[first + s - 1] if s > 0 else 0.0
        return P.T[first + P.I[i, 1] - 1] - done_ns, 0.0, 0.0
    if code == MLFQ:
        level, seq = P.I[i, 0], P.I[i, 1]
        if P.ip[1] == 1:  # fifo
            return float(level), P.F[i, 1], float(seq)
        return float(level), 1.0 if seq == 0 else 0.0, float(-seq)
    if code == SKIP_JOIN:
        return float(P.I[i, 0]), P.F[i, 1], float(P.I[i, 1])
    if code == LTR:
        if P.I[i, 1] > 0:
            return 0.0, float(P.I[i, 2]), P.F[i, 0]
        return 1.0, 0.0, P.F[i, 0]
    return _laps_key(P, S, i)


@njit(cache=True)
def observe(code, P, S, served, m, end):
    if code == MLFQ:
        return _mlfq_observe(P, S, served, m, end)
    if code == SKIP_JOIN:
        return _skip_join_observe(P, S, served, m, end)
    if code == LTR:
        P.ip[G] += 1
        for j in range(m):
            r = served[j]
            if P.I[r, 1] > 0:
                P.I[r, 1] -= 1
            P.I[r, 0] = P.ip[G]
        return False
    if code == LAPS_SD:
        _laps_observe(P, S, served, m)
    return False


@njit(cache=True)
def observes(code):
    """Whether `observe` does anything for this policy (engines may skip calling it otherwise)."""
    return code == MLFQ or code == SKIP_JOIN or code == LTR or code == LAPS_SD  # noqa: SIM109 (numba folds == on a literal)


@njit(cache=True)
def ranks_with_side_effects(code):
    """Whether `prerank` does anything for this policy (engines may skip calling it otherwise)."""
    return code == SSJF or code == LTR  # noqa: SIM109 (numba folds == on a literal)


@njit(cache=True)
def keys_static(code):
    """Whether a request's keys never change with its own service (engines may skip recomputing them)."""
    return code == FCFS or code == SJF or code == SSJF  # noqa: SIM109 (numba folds == on a literal)


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
