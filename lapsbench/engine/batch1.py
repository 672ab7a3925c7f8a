"""The batch-1 engine: one request per step, the scheduler's choice before every step, compiled (numba).

At batch size 1 every step a request takes is known in advance (lapsbench/engine/steptable.py: tokens and integer
nanoseconds per step), so a step is two table lookups. The scheduler's keys (lapsbench.schedulers.dispatch)
are cached per request: a request's keys change only when it is served, or for everyone when `prerank` /
`observe` return True, so after a step the choice can only move to the runner-up of the last scan, or change
at an arrival — the present requests are scanned only then. tests/reference_engine.py (the replay loop run
with an executor that runs nothing, one step at a time, re-ranking everyone) gives identical results.

A run is one call: the loop publishes its finished count in `shared[FINISHED]` and releases the GIL, and
lapsbench.progress.run_polled reads it from the calling thread; `shared[STOP]` set by the caller (Ctrl-C)
ends the run early.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

from lapsbench.engine.context import Results, RunContext
from lapsbench.engine.steptable import NS, to_ns
from lapsbench.progress import run_polled
from lapsbench.schedulers import dispatch
from lapsbench.schedulers.api import RequestView

FINISHED, STOP = 0, 1


@njit(cache=True)
def _refresh(code, P, R, active, na, keys):
    for j in range(na):
        i = active[j]
        keys[i, 0], keys[i, 1], keys[i, 2] = dispatch.key(code, P, R, i)


@njit(cache=True, inline="always")
def _before(keys, a, b):
    """a ranks before b (keys, then arrival order)."""
    return dispatch.key_less(keys[a, 0], keys[a, 1], keys[a, 2], a, keys[b, 0], keys[b, 1], keys[b, 2], b)


@njit(cache=True, inline="always")
def _best(keys, active, na):
    """The best present request and the runner-up (-1 if alone)."""
    chosen, runner_up = active[0], -1
    for j in range(1, na):
        i = active[j]
        if _before(keys, i, chosen):
            runner_up = chosen
            chosen = i
        elif runner_up < 0 or _before(keys, i, runner_up):
            runner_up = i
    return chosen, runner_up


@njit(cache=True, inline="always")
def _serve(R, out, offset, cum_tokens, cum_ns, k, k_steps, i, now):
    """Request i's next step from the table; returns the time it ends (ns). A decode step drafts `k`, or
    k_steps[row] when the table has per-step K's (goodput; empty otherwise)."""
    step = R.steps[i]
    row = offset[i] + step
    tokens = np.int64(cum_tokens[row])
    ns = cum_ns[row]
    if step > 0:
        tokens -= np.int64(cum_tokens[row - 1])
        ns -= cum_ns[row - 1]
        R.drafted[i] += k if k_steps.size == 0 else k_steps[row]
    now += ns
    now_s = now / NS
    R.generated[i] += tokens
    R.steps[i] += 1
    R.decode_steps[i] = step
    R.attained_s[i] = cum_ns[row] / NS  # a request's steps are contiguous in the table
    R.last_service_s[i] = now_s
    if step == 0:
        out.first_token_s[i] = now_s
    return now


@njit(cache=True, inline="always")
def _leave(active, na, i):
    """Remove i from active[:na], keeping the order; returns the new count."""
    j = 0
    while active[j] != i:
        j += 1
    for p in range(j, na - 1):
        active[p] = active[p + 1]
    return na - 1


# `_nrt=False`: the loop allocates nothing (every array comes from the caller), and without numba's runtime no
# reference counting is emitted around each access to an array of the R / out tuples (several per step).
# One specialisation per scheduler comes from P's type (lapsbench.schedulers.dispatch); `code` is a plain
# int64, as the batched engine and the step-by-step loops pass it, so every scheduler's compiled `key`,
# `observe` and `prerank` are shared by all of them.
@njit(cache=True, _nrt=False, nogil=True)
def _run(code, P, R, out, arrival_ns, offset, cum_tokens, cum_ns, k, k_steps, preemptive, active, keys, served,
         shared):
    """Serve every request (or until shared[STOP] is set)."""
    n = arrival_ns.size
    observes, ranks = dispatch.observes(code), dispatch.ranks_with_side_effects(code)
    rekey = not dispatch.keys_static(code)
    # np.int64, not literals: numba would first type the calls below with literal 0 arguments and compile
    # every scheduler's key and _refresh once more for them
    now = admitted = na = finished = np.int64(0)
    last, one = np.int64(-1), np.int64(1)
    ranked = False  # prerank already called for the coming choice
    while finished < n and shared[STOP] == 0:
        while admitted < n and arrival_ns[admitted] <= now:
            active[na] = admitted
            keys[admitted, 0], keys[admitted, 1], keys[admitted, 2] = dispatch.key(code, P, R, admitted)
            na += 1
            admitted += 1
        if na == 0:
            now = arrival_ns[admitted]
            continue
        runner_up = -1
        if not preemptive and last >= 0 and not R.done[last]:
            chosen = last
        else:
            if ranks and not ranked and dispatch.prerank(code, P, R, active, na, now / NS):
                _refresh(code, P, R, active, na, keys)
            chosen, runner_up = _best(keys, active, na)
        ranked = False
        if last >= 0 and chosen != last and not R.done[last]:
            out.preemptions[last] += 1
        last = chosen
        while True:  # steps of `chosen` while it stays the choice
            now = _serve(R, out, offset, cum_tokens, cum_ns, k, k_steps, chosen, now)
            dirty = False
            if observes:
                served[0] = chosen
                dirty = dispatch.observe(code, P, R, served, one, now / NS)
            if R.generated[chosen] >= R.output_tokens[chosen]:
                R.done[chosen] = True
                out.finish_s[chosen] = now / NS
                finished += 1
                shared[FINISHED] = finished
                na = _leave(active, na, chosen)
                if dirty:
                    _refresh(code, P, R, active, na, keys)
                break
            if rekey:
                keys[chosen, 0], keys[chosen, 1], keys[chosen, 2] = dispatch.key(code, P, R, chosen)
            if dirty:
                _refresh(code, P, R, active, na, keys)
                break
            if admitted < n and arrival_ns[admitted] <= now:
                break
            if not preemptive:
                continue
            ranked = True
            if ranks and dispatch.prerank(code, P, R, active, na, now / NS):
                _refresh(code, P, R, active, na, keys)
                break
            if runner_up >= 0 and _before(keys, runner_up, chosen):
                break
            ranked = False


def run_batch1(R: RequestView, out: Results, ctx: RunContext, code: int, P, preemptive: bool,
               progress: Callable[[int], None] | None = None) -> None:
    """Serve every request of `R` at batch size 1 under the scheduler packed in `P` (`code`: its dispatch code,
    lapsbench.schedulers.dispatch.code_of); fills `R`'s progress and `out`. `progress(finished)` is called from
    this thread about 10 times a second while the loop runs, and at the end."""
    n = R.arrival_s.size
    arrival_ns = to_ns(R.arrival_s)
    active = np.empty(max(n, 1), np.int64)
    keys = np.zeros((max(n, 1), 3))
    shared = np.zeros(2, np.int64)
    t = ctx.table
    assert t.offset.size == n + 1, "the step table is for another workload"
    k_steps = np.zeros(0, np.int64) if t.k_steps is None else np.ascontiguousarray(t.k_steps, np.int64)
    run_polled(_run, (np.int64(code), P, R, out, arrival_ns, t.offset, t.cum_tokens, t.cum_ns, np.int64(ctx.k),
                      k_steps, bool(preemptive), active, keys, np.zeros(1, np.int64), shared), shared, FINISHED, STOP,
               progress)
