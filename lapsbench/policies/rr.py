"""Round robin: every present request gets one step in turn (approximates processor sharing).

The turn order is by the time a request was last served (or arrived, if never served), so a newcomer
joins the back of the rotation. Ties: arrival, then id."""

from dataclasses import dataclass

import numpy as np

from lapsbench.policies import compiled
from lapsbench.policies.base import INF_STEPS, Plan, Policy, register
from lapsbench.state import EngineState


@register
@dataclass
class RoundRobin(Policy):
    name = "rr"
    preemptive = True
    summary = "round robin, one step each (processor sharing at step granularity)"

    def rank(self, state: EngineState, active: np.ndarray, now: float) -> np.ndarray:
        return state.last_service_s[active]

    def plan(self, state: EngineState, order: np.ndarray, now: float) -> Plan:
        return Plan(order, INF_STEPS)

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        return compiled.kernel(compiled.RR, state.n)
