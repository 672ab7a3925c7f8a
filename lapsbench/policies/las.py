"""Least attained service (foreground-background): preemptive, the least-served request runs next,
ties by arrival. Requests tied at the least service share the server round-robin, one step each,
which is how FB's processor sharing among equals looks at step granularity.

`unit` is how service is counted: "steps" (default; at batch size 1 each step is one forward of the
request, so steps are proportional to GPU time under a fixed cost profile), "tokens" (output tokens
generated) or "seconds" (GPU time attained)."""

from dataclasses import dataclass

import numpy as np

from lapsbench.errors import LapsbenchError
from lapsbench.policies import compiled
from lapsbench.policies.base import Plan, Policy, register
from lapsbench.state import EngineState

UNITS = ("steps", "tokens", "seconds")


def attained(state: EngineState, unit: str) -> np.ndarray:
    if unit == "steps":
        return state.steps
    if unit == "tokens":
        return state.generated
    return state.attained_s


@register
@dataclass
class LAS(Policy):
    unit: str = "steps"

    name = "las"
    preemptive = True
    summary = "least attained service first (FB); ties share round-robin; preemptive"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise LapsbenchError(f"scheduler.unit: {self.unit!r} — expected one of {list(UNITS)}")

    def rank(self, state: EngineState, active: np.ndarray, now: float) -> np.ndarray:
        return attained(state, self.unit)[active]

    def plan(self, state: EngineState, order: np.ndarray, now: float) -> Plan:
        service = attained(state, self.unit)[order]
        if self.unit != "steps":
            # Service per step varies (tokens drawn, context-dependent cost): re-rank after every step.
            return Plan(order[:1], 1)
        least = service[0]
        tied = service == least
        group = np.sort(order[tied])
        others = service[~tied]
        if others.size == 0:
            return Plan(group, np.iinfo(np.int64).max // 4)
        return Plan(group, int(others.min() - least) * group.size)

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        return compiled.kernel(compiled.LAS, state.n, ip=[compiled.UNIT_CODE[self.unit]])
