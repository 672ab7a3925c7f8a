"""The batch-1 engine compiled: the reference engine's loop (one step at a time, the policy's choice before
every step) run inside numba over the step table.

At batch size 1 every step a request takes is known in advance (lapsbench/steptable.py), so a step is two
table lookups; the scheduler's keys come from its compiled functions (lapsbench/schedulers/dispatch.py) and
are cached per request (a request's keys change only when it is served or when the policy says all may
have changed), so choosing the next request is one scan over the present ones. Same integer-nanosecond
clock and the same bookkeeping as tests/reference_engine.py, so results are identical bit for bit.

A run is one call: the loop publishes its finished count in `reg` and releases the GIL, and
lapsbench.progress.run_polled reads the count from the calling thread (progress without leaving the loop).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import literally, njit

from lapsbench.progress import run_polled
from lapsbench.schedulers import dispatch
from lapsbench.schedulers.stepwise import request_view
from lapsbench.state import EngineState
from lapsbench.steptable import StepTable, to_ns

NS = 1_000_000_000
# registers of a run: FINISHED is kept current (read by another thread for progress), STOP set by the caller
# ends the run early (Ctrl-C); the others are written at the end
NOW, ADMITTED, PRESENT, LAST, FINISHED, STOP = range(6)


@njit(cache=True)
def _refresh(code, P, R, active, na, keys):
    for j in range(na):
        i = active[j]
        keys[i, 0], keys[i, 1], keys[i, 2] = dispatch.key(code, P, R, i)


@njit(cache=True)
def _run(code, P, R, arrival_ns, offset, cum_tokens, cum_ns, preemptive, first_token_s, finish_s, preemptions,
         active, keys, reg, k):
    """Serve every request (or until reg[STOP] is set); state lives in the arrays.

    Same decisions as the reference engine, which ranks everyone before every step; but a request's keys
    change only when it is served (or when prerank/observe say all may have), so after a step the choice
    can only move to the runner-up of the last scan, or change at an arrival: the present requests are
    scanned only then."""
    literally(code)  # one specialisation per policy: its branches alone, inlined
    generated, steps, decode_steps, drafted = R.generated, R.steps, R.decode_steps, R.drafted
    attained_s, last_service_s, done, output = R.attained_s, R.last_service_s, R.done, R.output_tokens
    n = arrival_ns.size
    observes = dispatch.observes(code)
    ranks = dispatch.ranks_with_side_effects(code)
    rekey = not dispatch.keys_static(code)
    now, admitted, na, last, finished = reg[NOW], reg[ADMITTED], reg[PRESENT], reg[LAST], reg[FINISHED]
    served = np.empty(1, np.int64)
    ranked = False  # prerank already called for the coming choice
    while finished < n and reg[STOP] == 0:
        while admitted < n and arrival_ns[admitted] <= now:
            active[na] = admitted
            keys[admitted, 0], keys[admitted, 1], keys[admitted, 2] = dispatch.key(code, P, R, admitted)
            na += 1
            admitted += 1
        if na == 0:
            now = arrival_ns[admitted]
            continue
        runner_up = -1
        if not preemptive and last >= 0 and not done[last]:
            chosen = last
        else:
            if ranks and not ranked and dispatch.prerank(code, P, R, active, na, now / NS):
                _refresh(code, P, R, active, na, keys)
            chosen = active[0]
            for j in range(1, na):
                i = active[j]
                if dispatch.key_less(keys[i, 0], keys[i, 1], keys[i, 2], i,
                                     keys[chosen, 0], keys[chosen, 1], keys[chosen, 2], chosen):
                    runner_up = chosen
                    chosen = i
                elif runner_up < 0 or dispatch.key_less(keys[i, 0], keys[i, 1], keys[i, 2], i, keys[runner_up, 0],
                                                        keys[runner_up, 1], keys[runner_up, 2], runner_up):
                    runner_up = i
        ranked = False
        if last >= 0 and chosen != last and not done[last]:
            preemptions[last] += 1
        last = chosen
        while True:  # steps of `chosen` while it stays the choice
            step = steps[chosen]
            row = offset[chosen] + step
            tokens = np.int64(cum_tokens[row])
            ns = cum_ns[row]
            if step > 0:
                tokens -= np.int64(cum_tokens[row - 1])
                ns -= cum_ns[row - 1]
            now += ns
            now_s = now / NS
            generated[chosen] += tokens
            steps[chosen] += 1
            decode_steps[chosen] = step
            drafted[chosen] = step * k
            attained_s[chosen] = cum_ns[row] / NS  # a request's steps are contiguous in the table
            last_service_s[chosen] = now_s
            if step == 0:
                first_token_s[chosen] = now_s
            dirty = False
            if observes:
                served[0] = chosen
                dirty = dispatch.observe(code, P, R, served, 1, now_s)
            if generated[chosen] >= output[chosen]:
                done[chosen] = True
                finish_s[chosen] = now_s
                finished += 1
                reg[FINISHED] = finished
                j = 0
                while active[j] != chosen:
                    j += 1
                active[j:na - 1] = active[j + 1:na]
                na -= 1
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
            if ranks and dispatch.prerank(code, P, R, active, na, now_s):
                _refresh(code, P, R, active, na, keys)
                break
            if runner_up >= 0 and dispatch.key_less(keys[runner_up, 0], keys[runner_up, 1], keys[runner_up, 2],
                                                    runner_up, keys[chosen, 0], keys[chosen, 1], keys[chosen, 2],
                                                    chosen):
                break
            ranked = False
    reg[NOW], reg[ADMITTED], reg[PRESENT], reg[LAST], reg[FINISHED] = now, admitted, na, last, finished


@functools.cache
def _loop(code: int):
    """`_run` specialised to one policy as a dispatcher of its own: `code` is a constant of this closure, so a
    call dispatches in microseconds, where calling `_run` from Python re-runs numba's typing to resolve
    `literally` (~100 ms a call). Cached on disk per code (numba keys a closure's cache by its values)."""
    @njit(cache=True, nogil=True)
    def run(P, R, arrival_ns, offset, cum_tokens, cum_ns, preemptive, first_token_s, finish_s, preemptions,
            active, keys, reg, k):
        _run(code, P, R, arrival_ns, offset, cum_tokens, cum_ns, preemptive, first_token_s, finish_s, preemptions,
             active, keys, reg, k)
    return run


def run_compiled(state: EngineState, code: int, P: tuple, preemptive: bool, table: StepTable,
                 progress: Callable[[int], None] | None = None) -> EngineState:
    """Serve every request of `state` at batch size 1 under the scheduler of dispatch code `code` and packed
    tuple `P`; fills the state's result arrays. `progress(finished)` is called from this thread about 10
    times a second while the loop runs, and at the end."""
    n = state.n
    R = request_view(state)
    arrival_ns = to_ns(state.arrival_s)
    active = np.empty(max(n, 1), np.int64)
    keys = np.zeros((max(n, 1), 3))
    reg = np.zeros(6, np.int64)
    reg[LAST] = -1
    run_polled(_loop(code), (P, R, arrival_ns, table.offset, table.cum_tokens, table.cum_ns, preemptive,
                             state.first_token_s, state.finish_s, state.preemptions, active, keys, reg, state.k),
               reg, FINISHED, STOP, progress)
    return state
