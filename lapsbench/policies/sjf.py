"""Oracle shortest job first: non-preemptive, by true output length (ties: arrival, then id)."""

from dataclasses import dataclass

import numpy as np

from lapsbench.policies import compiled
from lapsbench.policies.base import Policy, register
from lapsbench.state import EngineState


@register
@dataclass
class SJF(Policy):
    name = "sjf"
    preemptive = False
    summary = "oracle shortest job first by true output tokens; non-preemptive"

    def rank(self, state: EngineState, active: np.ndarray, now: float) -> np.ndarray:
        return state.output_tokens[active]

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        return compiled.kernel(compiled.SJF, state.n)
