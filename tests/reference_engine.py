"""A slow, obviously correct engine: one step at a time, plain Python, re-ranking after every step.

It shares only the policy ranking, the acceptance draws and the cost functions with the fast engine,
so agreement between the two checks the fast engine's event skipping, segment cutting and
bookkeeping."""

from __future__ import annotations

import numpy as np

from lapsbench.engine import rank_order, step_costs
from lapsbench.state import EngineState


def reference_simulate(state: EngineState, policy, acceptance) -> EngineState:
    policy.prepare(state)
    n = state.n
    now = 0.0
    last_served = -1
    while not state.done.all():
        present = [i for i in range(n) if state.arrival_s[i] <= now and not state.done[i]]
        if not present:
            now = float(min(state.arrival_s[i] for i in range(n) if not state.done[i]))
            continue
        active = np.array(present, dtype=np.int64)
        if not policy.preemptive and last_served >= 0 and not state.done[last_served]:
            chosen = last_served
        else:
            chosen = int(policy.plan(state, rank_order(policy, state, active, now), now).group[0])
        if last_served >= 0 and chosen != last_served and not state.done[last_served]:
            state.preemptions[last_served] += 1
        req = np.array([chosen])
        steps_done = int(state.steps[chosen])
        before = int(state.generated[chosen])
        if steps_done == 0:
            tokens = 1
        else:
            tokens = int(acceptance.emitted(req, np.array([steps_done - 1]), np.array([before]))[0])
        after = min(before + tokens, int(state.output_tokens[chosen]))
        cost = float(step_costs(state, req, np.array([steps_done]), np.array([before]))[0])
        now = now + cost
        state.generated[chosen] = after
        state.steps[chosen] += 1
        state.decode_steps[chosen] = state.steps[chosen] - 1
        state.attained_s[chosen] += cost
        state.last_service_s[chosen] = now
        if steps_done == 0:
            state.first_token_s[chosen] = now
        policy.observe(state, req, np.array([after - before]), np.array([now]))
        if after >= state.output_tokens[chosen]:
            state.done[chosen] = True
            state.finish_s[chosen] = now
        last_served = chosen
    return state
