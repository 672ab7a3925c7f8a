"""SSJF (Qiu et al., AIOps'24): non-preemptive shortest *predicted* job first.

Ordering key: the length predictor's key (default `bucketed`: the predicted bucket index of a 5-class
classifier with SSJF's measured 60% exact / 93% within-one accuracy, its cuts at the p25/p50/p75/p99 of
requests the run does not score, fixed once per run by `derive`; SSJF's Vicuna cuts via `predictor_cuts`);
ties by arrival. Starvation guard (SSJF's util.py): at a scheduling decision, if the longest-waiting queued
request has waited more than `starvation_s` (100 s) or more than `starvation_factor` (10) × its own *true*
service time, the whole queue is ordered by arrival (longest waiting first) for that decision.
`starvation_guard = false` turns it off. The true service time is read from the acceptance process (as
SSJF's simulator uses the true size); without it (bare engine tests) it is output_tokens × the decode step
time at the prompt's context."""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from lapsbench.schedulers._common import PredictorParams, TrueFuture, decode_step_s, need_non_negative
from lapsbench.schedulers.base import Scheduler, register
from lapsbench.schedulers.jit import njit


class SSJFPacked(NamedTuple):
    guard: bool
    has_service: bool          # the factor rule applies (a service time is known)
    starvation_s: float
    starvation_factor: float
    predicted: np.ndarray      # float64: the predictor's key
    service_s: np.ndarray      # float64: the true service time (zeros without the factor rule)
    starving: np.ndarray       # int64[1]: the guard fired at the last ranking


@register
@dataclass(frozen=True)
class SSJF(PredictorParams, Scheduler):
    predictor: str = "bucketed"
    starvation_guard: bool = True
    starvation_s: float = 100.0
    starvation_factor: float = 10.0

    name = "ssjf"
    preemptive = False
    static_keys = True
    summary = "shortest predicted job first (SSJF); non-preemptive; starvation guard by waiting time"

    def __post_init__(self) -> None:
        self.check_predictor()
        need_non_negative("starvation_s", self.starvation_s)
        need_non_negative("starvation_factor", self.starvation_factor)

    def pack(self, state) -> SSJFPacked:
        service = None
        if self.starvation_guard and self.starvation_factor > 0:
            if state.acceptance is not None:
                service = TrueFuture(state).service_s()
            else:  # bare engine tests: every step at the request's prompt context
                service = state.output_tokens * decode_step_s(state, state.prompt_tokens)
        has_service = service is not None
        return SSJFPacked(self.starvation_guard, has_service, float(self.starvation_s), float(self.starvation_factor),
                          np.asarray(self.predict(state).key, np.float64),
                          np.asarray(service if has_service else np.zeros(state.n), np.float64), np.zeros(1, np.int64))

    @staticmethod
    @njit(cache=True)
    def prerank(P, R, active, na, now):
        starving = 0
        if P.guard and na > 1:
            oldest = -1
            for j in range(na):
                i = active[j]
                if R.steps[i] == 0 and (oldest < 0 or R.arrival_s[i] < R.arrival_s[oldest]):
                    oldest = i
            if oldest >= 0:
                waited = now - R.arrival_s[oldest]
                if waited > P.starvation_s or (P.has_service and waited > P.starvation_factor * P.service_s[oldest]):
                    starving = 1
        changed = starving != P.starving[0]
        P.starving[0] = starving
        return changed

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        return (R.arrival_s[i] if P.starving[0] != 0 else P.predicted[i]), 0.0, 0.0
