"""A slow, obviously correct batch-1 engine: one step at a time, plain Python, re-ranking after every step.

It shares with the fast engine only the policy ranking and the step table (each request's tokens and
nanoseconds per step, checked on its own in tests/test_steptable.py), so agreement checks the fast
engine's event skipping, segment cutting and bookkeeping."""

from __future__ import annotations

import numpy as np

from lapsbench.engine import rank_order, table_for
from lapsbench.state import EngineState
from lapsbench.steptable import NS, to_ns


def reference_simulate(state: EngineState, policy, acceptance) -> EngineState:
    table = table_for(state, acceptance)
    arrival = [int(x) for x in to_ns(state.arrival_s)]
    policy.prepare(state)
    n = state.n
    now = 0
    attained = [0] * n
    last_served = -1
    while not state.done.all():
        present = [i for i in range(n) if arrival[i] <= now and not state.done[i]]
        if not present:
            now = min(arrival[i] for i in range(n) if not state.done[i])
            continue
        active = np.array(present, dtype=np.int64)
        if not policy.preemptive and last_served >= 0 and not state.done[last_served]:
            chosen = last_served
        else:
            chosen = int(policy.plan(state, rank_order(policy, state, active, now / NS), now / NS).group[0])
        if last_served >= 0 and chosen != last_served and not state.done[last_served]:
            state.preemptions[last_served] += 1
        step = int(state.steps[chosen])
        tokens, ns = table.step(chosen, step)
        now += ns
        attained[chosen] += ns
        state.generated[chosen] += tokens
        state.steps[chosen] += 1
        state.decode_steps[chosen] = state.steps[chosen] - 1
        state.attained_s[chosen] = attained[chosen] / NS
        state.last_service_s[chosen] = now / NS
        if step == 0:
            state.first_token_s[chosen] = now / NS
        policy.observe(state, np.array([chosen]), np.array([tokens]), np.array([now / NS]))
        if state.generated[chosen] >= state.output_tokens[chosen]:
            state.done[chosen] = True
            state.finish_s[chosen] = now / NS
        last_served = chosen
    return state
