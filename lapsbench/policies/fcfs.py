"""First come, first served: run requests to completion in arrival order."""

from dataclasses import dataclass

import numpy as np

from lapsbench.policies import compiled
from lapsbench.policies.base import Policy, register
from lapsbench.state import EngineState


@register
@dataclass
class FCFS(Policy):
    name = "fcfs"
    preemptive = False
    summary = "first come, first served; non-preemptive"

    def rank(self, state: EngineState, active: np.ndarray, now: float) -> np.ndarray:
        return state.arrival_s[active]

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        return compiled.kernel(compiled.FCFS, state.n)
