"""Oracle shortest remaining processing time: preemptive at step boundaries, by true remaining tokens.

Once it runs, the chosen request's remaining work only shrinks and nobody else's changes, so the
ranking holds until the next arrival or completion (the default plan)."""

from dataclasses import dataclass

import numpy as np

from lapsbench.policies import compiled
from lapsbench.policies.base import INF_STEPS, Policy, register
from lapsbench.state import EngineState


@register
@dataclass
class SRPT(Policy):
    name = "srpt"
    preemptive = True
    summary = "oracle shortest remaining tokens first; preemptive at step boundaries"

    def rank(self, state: EngineState, active: np.ndarray, now: float) -> np.ndarray:
        return state.output_tokens[active] - state.generated[active]

    def batch_horizon(self, state: EngineState, batch: np.ndarray, now: float) -> int:
        return INF_STEPS  # members' remaining work only shrinks; everyone else's is unchanged

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        return compiled.kernel(compiled.SRPT, state.n)
