"""A slow, obviously correct batch-1 engine: one step at a time, plain Python, re-ranking everyone present
before every step.

It shares with the compiled engine only the scheduler's compiled functions (through
lapsbench.schedulers.stepwise: prerank, then every present request's keys; observe after each step) and the
step table (each request's tokens and nanoseconds per step, checked on its own in tests/test_steptable.py),
so agreement checks the compiled engine's key caching, runner-up shortcut and bookkeeping."""

from __future__ import annotations

import numpy as np

from lapsbench.engine import table_for
from lapsbench.schedulers.stepwise import Bound
from lapsbench.state import EngineState
from lapsbench.steptable import NS, to_ns


def reference_simulate(state: EngineState, policy, acceptance) -> EngineState:
    return reference_run(state, policy, acceptance).state


class Run:
    def __init__(self, state: EngineState, bound: Bound) -> None:
        self.state, self.bound, self.P = state, bound, bound.P


def reference_run(state: EngineState, policy, acceptance) -> Run:
    """The run, with the scheduler's packed tuple as it ended (`.P`)."""
    table = table_for(state, acceptance)
    arrival = [int(x) for x in to_ns(state.arrival_s)]
    bound = Bound(policy, state)
    n = state.n
    now = 0
    attained = [0] * n
    last_served = -1
    while not state.done.all():
        present = [i for i in range(n) if arrival[i] <= now and not state.done[i]]
        if not present:
            now = min(arrival[i] for i in range(n) if not state.done[i])
            continue
        if not policy.preemptive and last_served >= 0 and not state.done[last_served]:
            chosen = last_served
        else:
            chosen = int(bound.order(np.array(present, dtype=np.int64), now / NS)[0])
        if last_served >= 0 and chosen != last_served and not state.done[last_served]:
            state.preemptions[last_served] += 1
        step = int(state.steps[chosen])
        tokens, ns = table.step(chosen, step)
        now += ns
        attained[chosen] += ns
        state.generated[chosen] += tokens
        state.steps[chosen] += 1
        state.decode_steps[chosen] = state.steps[chosen] - 1
        state.drafted[chosen] = state.k * state.decode_steps[chosen]
        state.attained_s[chosen] = attained[chosen] / NS
        state.last_service_s[chosen] = now / NS
        if step == 0:
            state.first_token_s[chosen] = now / NS
        bound.observe(np.array([chosen]), now / NS)
        if state.generated[chosen] >= state.output_tokens[chosen]:
            state.done[chosen] = True
            state.finish_s[chosen] = now / NS
        last_served = chosen
    return Run(state, bound)
