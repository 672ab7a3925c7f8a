"""LTR (vllm-ltr, Fu et al., NeurIPS'24; baselines.md §3): each request gets a score once, from its prompt,
when it arrives (`predictor = "rank"`: a score with Kendall τ `predictor_tau` = 0.6 against the true
length); every step all present requests are re-sorted by score (predicted shortest first) and the best
runs: preemptive, by predicted *total* length (no remaining-time update).

Starvation guard (`starvation_steps` = 200, `boost_steps` = 10; 0 = off): a present request counts the
engine iterations in which it was not served since it was last served (or arrived); at 200 it gets top
priority for its next 10 served iterations, then falls back to its score with the count reset. Boosted
requests go first in the order they were boosted, then by score."""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from lapsbench.schedulers._common import PredictorParams, need_at_least
from lapsbench.schedulers.base import Scheduler, register
from lapsbench.schedulers.jit import njit


class LTRPacked(NamedTuple):
    starvation_steps: int
    boost_steps: int
    score: np.ndarray       # float64: the predictor's key, fixed at arrival
    mark: np.ndarray        # int64: iteration last served or admitted (-1 = not yet)
    boost_left: np.ndarray  # int64: boosted steps left
    boost_seq: np.ndarray   # int64: order of boosts
    counters: np.ndarray    # int64[2]: engine iterations, boost sequence counter


@register
@dataclass(frozen=True)
class LTR(PredictorParams, Scheduler):
    predictor: str = "rank"
    starvation_steps: int = 200
    boost_steps: int = 10

    name = "ltr"
    summary = "learning-to-rank order (vllm-ltr): predicted score fixed at arrival, re-sorted every step"

    def __post_init__(self) -> None:
        self.check_predictor()
        need_at_least("starvation_steps", self.starvation_steps, 0)
        need_at_least("boost_steps", self.boost_steps, 1)

    def pack(self, state) -> LTRPacked:
        n = state.n
        return LTRPacked(self.starvation_steps, self.boost_steps, np.asarray(self.predict(state).key, np.float64),
                         np.full(n, -1, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(2, np.int64))

    @staticmethod
    @njit(cache=True)
    def prerank(P, R, active, na, now):
        it = P.counters[0]
        for j in range(na):
            i = active[j]
            if P.mark[i] < 0:
                P.mark[i] = it
        fired = False
        if P.starvation_steps <= 0:
            return fired
        for j in range(na):
            i = active[j]
            if it - P.mark[i] >= P.starvation_steps and P.boost_left[i] == 0:
                P.counters[1] += 1
                P.boost_left[i] = P.boost_steps
                P.boost_seq[i] = P.counters[1]
                fired = True
        return fired

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        if P.boost_left[i] > 0:
            return 0.0, float(P.boost_seq[i]), P.score[i]
        return 1.0, 0.0, P.score[i]

    @staticmethod
    @njit(cache=True)
    def observe(P, R, served, m, end):
        P.counters[0] += 1
        for j in range(m):
            r = served[j]
            if P.boost_left[r] > 0:
                P.boost_left[r] -= 1
            P.mark[r] = P.counters[0]
        return False
