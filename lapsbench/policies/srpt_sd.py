"""SRPT-SD: the oracle lower bound of speculative decoding at batch size 1 — shortest true remaining
*time* first, where the remaining time is computed from the acceptance process's own future draws (the
steps the request will really take) and the cost profile (what each of those steps will really cost).
Preemptive at step boundaries. Needs EngineState.acceptance (the runner sets it).

Once it runs, the chosen request's remaining time only shrinks and nobody else's changes, so the ranking
holds until the next arrival or completion (the default plan)."""

from dataclasses import dataclass

import numpy as np

from lapsbench.policies import compiled
from lapsbench.policies._common import TrueFuture
from lapsbench.policies.base import Policy, register
from lapsbench.state import EngineState


@register
@dataclass
class SRPTSD(Policy):
    name = "srpt-sd"
    preemptive = True
    summary = "oracle shortest true remaining time under the true future acceptance; preemptive"

    def prepare(self, state: EngineState) -> None:
        self.future = TrueFuture(state)

    def rank(self, state: EngineState, active: np.ndarray, now: float) -> np.ndarray:
        return self.future.remaining_ns(state, active)

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        table = self.future.table
        k = compiled.kernel(compiled.SRPT_SD, state.n, I_cols=2, T=table.cum_ns.astype(np.float64))
        k.I[:, 0], k.I[:, 1] = table.offset[:-1], table.n_steps
        return k
