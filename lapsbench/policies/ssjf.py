"""SSJF (Qiu et al., AIOps'24): non-preemptive shortest *predicted* job first.

Ordering key: the length predictor's key (default `bucketed`: the predicted bucket index of a 5-class
classifier with SSJF's measured 60% exact / 93% within-one accuracy, its cuts at the p25/p50/p75/p99 of
requests the run does not score, fixed once per run by `derive`; SSJF's Vicuna cuts via `predictor_cuts`);
ties by arrival. Starvation guard
(SSJF's util.py): at a scheduling decision, if the longest-waiting queued request has waited more than
`starvation_s` (100 s) or more than `starvation_factor` (10) × its own *true* service time, the whole
queue is ordered by waiting time (longest first) for that decision. `starvation_guard = false` turns it
off (the Cobham check). The true service time is read from the acceptance process (as SSJF's simulator
uses the true size); without it (bare engine tests) it is output_tokens × the decode step time."""

from dataclasses import dataclass

import numpy as np

from lapsbench.policies import compiled
from lapsbench.policies._common import PredictorParams, TrueFuture, decode_step_s, need_non_negative
from lapsbench.policies.base import Policy, register
from lapsbench.state import EngineState


@register
@dataclass
class SSJF(PredictorParams, Policy):
    predictor: str = "bucketed"
    starvation_guard: bool = True
    starvation_s: float = 100.0
    starvation_factor: float = 10.0

    name = "ssjf"
    preemptive = False
    summary = "shortest predicted job first (SSJF); non-preemptive; starvation guard by waiting time"

    def __post_init__(self) -> None:
        self.check_predictor()
        need_non_negative("starvation_s", self.starvation_s)
        need_non_negative("starvation_factor", self.starvation_factor)

    def prepare(self, state: EngineState) -> None:
        self._key = self.predict(state).key
        self._service = None
        if self.starvation_guard and self.starvation_factor > 0:
            if state.acceptance is not None:
                self._service = TrueFuture(state).service_s(np.arange(state.n))
            else:  # bare engine tests: every step at the request's prompt context
                self._service = state.output_tokens * decode_step_s(state, state.prompt_tokens)

    def rank(self, state: EngineState, active: np.ndarray, now: float) -> np.ndarray:
        if self.starvation_guard and active.size > 1:
            waiting = active[state.steps[active] == 0]
            if waiting.size:
                oldest = waiting[np.argmin(state.arrival_s[waiting])]
                waited = now - state.arrival_s[oldest]
                starving = waited > self.starvation_s or (
                    self._service is not None and waited > self.starvation_factor * self._service[oldest])
                if starving:
                    return state.arrival_s[active]
        return self._key[active]

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        has_service = self._service is not None
        service = self._service if has_service else np.zeros(state.n)
        return compiled.kernel(compiled.SSJF, state.n, fp=[self.starvation_s, self.starvation_factor],
                               ip=[int(self.starvation_guard), int(has_service)],
                               F=np.column_stack((self._key, service)))
