"""The batch-1 engine compiled: the reference engine's loop (one step at a time, the policy's choice before
every step) run inside numba over the step table.

At batch size 1 every step a request takes is known in advance (lapsbench/steptable.py), so a step is two
table lookups; the policy's keys come from its compiled restatement (lapsbench/policies/compiled.py) and
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

from lapsbench.policies import compiled as pc
from lapsbench.progress import run_polled
from lapsbench.state import EngineState
from lapsbench.steptable import StepTable, to_ns

NS = 1_000_000_000
# registers of a run: FINISHED is kept current (read by another thread for progress), STOP set by the caller
# ends the run early (Ctrl-C); the others are written at the end
NOW, ADMITTED, PRESENT, LAST, FINISHED, STOP = range(6)


@njit(cache=True)
def _refresh(code, P, S, active, na, keys):
    for j in range(na):
        i = active[j]
        keys[i, 0], keys[i, 1], keys[i, 2] = pc.key(code, P, S, i)


@njit(cache=True)
def _run(code, P, S, arrival_ns, offset, cum_tokens, cum_ns, preemptive, first_token_s, finish_s, preemptions,
         active, keys, reg):
    """Serve every request (or until reg[STOP] is set); state lives in the arrays.

    Same decisions as the reference engine, which ranks everyone before every step; but a request's keys
    change only when it is served (or when prerank/observe say all may have), so after a step the choice
    can only move to the runner-up of the last scan, or change at an arrival: the present requests are
    scanned only then."""
    literally(code)  # one specialisation per policy: its branches alone, inlined
    generated, steps, decode_steps, attained_s, last_service_s, done = S[3], S[4], S[5], S[6], S[7], S[8]
    output = S[2]
    n = arrival_ns.size
    observes = pc.observes(code)
    ranks = pc.ranks_with_side_effects(code)
    rekey = not pc.keys_static(code)
    now, admitted, na, last, finished = reg[NOW], reg[ADMITTED], reg[PRESENT], reg[LAST], reg[FINISHED]
    served = np.empty(1, np.int64)
    ranked = False  # prerank already called for the coming choice
    while finished < n and reg[STOP] == 0:
        while admitted < n and arrival_ns[admitted] <= now:
            active[na] = admitted
            keys[admitted, 0], keys[admitted, 1], keys[admitted, 2] = pc.key(code, P, S, admitted)
            na += 1
            admitted += 1
        if na == 0:
            now = arrival_ns[admitted]
            continue
        runner_up = -1
        if not preemptive and last >= 0 and not done[last]:
            chosen = last
        else:
            if ranks and not ranked and pc.prerank(code, P, S, active, na, now / NS):
                _refresh(code, P, S, active, na, keys)
            chosen = active[0]
            for j in range(1, na):
                i = active[j]
                if pc.key_less(keys[i, 0], keys[i, 1], keys[i, 2], i,
                               keys[chosen, 0], keys[chosen, 1], keys[chosen, 2], chosen):
                    runner_up = chosen
                    chosen = i
                elif runner_up < 0 or pc.key_less(keys[i, 0], keys[i, 1], keys[i, 2], i, keys[runner_up, 0],
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
            attained_s[chosen] = cum_ns[row] / NS  # a request's steps are contiguous in the table
            last_service_s[chosen] = now_s
            if step == 0:
                first_token_s[chosen] = now_s
            dirty = False
            if observes:
                served[0] = chosen
                dirty = pc.observe(code, P, S, served, 1, now_s)
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
                    _refresh(code, P, S, active, na, keys)
                break
            if rekey:
                keys[chosen, 0], keys[chosen, 1], keys[chosen, 2] = pc.key(code, P, S, chosen)
            if dirty:
                _refresh(code, P, S, active, na, keys)
                break
            if admitted < n and arrival_ns[admitted] <= now:
                break
            if not preemptive:
                continue
            ranked = True
            if ranks and pc.prerank(code, P, S, active, na, now_s):
                _refresh(code, P, S, active, na, keys)
                break
            if runner_up >= 0 and pc.key_less(keys[runner_up, 0], keys[runner_up, 1], keys[runner_up, 2], runner_up,
                                              keys[chosen, 0], keys[chosen, 1], keys[chosen, 2], chosen):
                break
            ranked = False
    reg[NOW], reg[ADMITTED], reg[PRESENT], reg[LAST], reg[FINISHED] = now, admitted, na, last, finished


@functools.cache
def _loop(code: int):
    """`_run` specialised to one policy as a dispatcher of its own: `code` is a constant of this closure, so a
    call dispatches in microseconds, where calling `_run` from Python re-runs numba's typing to resolve
    `literally` (~100 ms a call). Cached on disk per code (numba keys a closure's cache by its values)."""
    @njit(cache=True, nogil=True)
    def run(P, S, arrival_ns, offset, cum_tokens, cum_ns, preemptive, first_token_s, finish_s, preemptions,
            active, keys, reg):
        _run(code, P, S, arrival_ns, offset, cum_tokens, cum_ns, preemptive, first_token_s, finish_s, preemptions,
             active, keys, reg)
    return run


def run_compiled(state: EngineState, kernel: pc.PolicyKernel, preemptive: bool, table: StepTable,
                 progress: Callable[[int], None] | None = None) -> EngineState:
    """Serve every request of `state` at batch size 1 (the policy already prepared, `kernel` its
    compiled form); fills the state's result arrays like lapsbench.engine.simulate. `progress(finished)`
    is called from this thread about 10 times a second while the loop runs, and at the end."""
    n = state.n
    S = pc.state_tuple(state)
    arrival_ns = to_ns(state.arrival_s)
    active = np.empty(max(n, 1), np.int64)
    keys = np.zeros((max(n, 1), 3))
    reg = np.zeros(6, np.int64)
    reg[LAST] = -1
    run_polled(_loop(kernel.code), (kernel, S, arrival_ns, table.offset, table.cum_tokens, table.cum_ns, preemptive,
                                    state.first_token_s, state.finish_s, state.preemptions, active, keys, reg),
               reg, FINISHED, STOP, progress)
    return state
