"""LTR (vllm-ltr, Fu et al., NeurIPS'24; baselines.md §3): each request gets a score once, from its prompt,
when it arrives (`predictor = "rank"`: a score with Kendall τ `predictor_tau` = 0.6 against the true
length); every step all present requests are re-sorted by score (predicted shortest first) and the best
runs: preemptive, by predicted *total* length (no remaining-time update).

Starvation guard (`starvation_steps` = 200, `boost_steps` = 10; 0 = off): a present request counts the
engine iterations in which it was not served since it was last served (or arrived); at 200 it gets top
priority for its next 10 served iterations, then falls back to its score with the count reset. Boosted
requests go first in the order they were boosted, then by score."""

from dataclasses import dataclass

import numpy as np

from lapsbench.errors import LapsbenchError
from lapsbench.policies import compiled
from lapsbench.policies._common import PredictorParams
from lapsbench.policies.base import INF_STEPS, Plan, Policy, register
from lapsbench.state import EngineState


@register
@dataclass
class LTR(PredictorParams, Policy):
    predictor: str = "rank"
    starvation_steps: int = 200
    boost_steps: int = 10

    name = "ltr"
    preemptive = True
    summary = "learning-to-rank order (vllm-ltr): predicted score fixed at arrival, re-sorted every step"

    def __post_init__(self) -> None:
        self.check_predictor()
        if self.starvation_steps < 0:
            raise LapsbenchError(f"scheduler.starvation_steps: {self.starvation_steps!r} — expected an integer >= 0")
        if self.boost_steps < 1:
            raise LapsbenchError(f"scheduler.boost_steps: {self.boost_steps!r} — expected an integer >= 1")

    def prepare(self, state: EngineState) -> None:
        self.score = self.predict(state).key
        n = state.n
        self.iterations = 0
        self.mark = np.full(n, -1, np.int64)       # iteration count when last served / admitted (-1 = not yet)
        self.boost_left = np.zeros(n, np.int64)
        self.boost_seq = np.zeros(n, np.int64)
        self._seq = 0

    def _guard(self, active: np.ndarray) -> None:
        new = active[self.mark[active] < 0]
        self.mark[new] = self.iterations
        if self.starvation_steps <= 0:
            return
        idle = self.iterations - self.mark[active]
        fire = active[(idle >= self.starvation_steps) & (self.boost_left[active] == 0)]
        for r in fire:
            self._seq += 1
            self.boost_left[r] = self.boost_steps
            self.boost_seq[r] = self._seq

    def rank(self, state: EngineState, active: np.ndarray, now: float) -> tuple[np.ndarray, ...]:
        self._guard(active)
        boosted = self.boost_left[active] > 0
        return (~boosted).astype(np.int64), np.where(boosted, self.boost_seq[active], 0), self.score[active]

    def plan(self, state: EngineState, order: np.ndarray, now: float) -> Plan:
        r = int(order[0])
        h = INF_STEPS
        if self.starvation_steps > 0:
            if self.boost_left[r] > 0:
                h = int(self.boost_left[r])
            others = order[1:]
            waiting = others[self.boost_left[others] == 0]
            if waiting.size:
                h = min(h, max(1, self.starvation_steps - int((self.iterations - self.mark[waiting]).max())))
        return Plan(order[:1], h)

    def observe(self, state: EngineState, served: np.ndarray, emitted: np.ndarray, end_s: np.ndarray) -> None:
        self.iterations += np.unique(end_s).size
        for r in np.unique(served):
            count = int(np.count_nonzero(served == r))
            if self.boost_left[r] > 0:
                self.boost_left[r] = max(0, self.boost_left[r] - count)
            self.mark[r] = self.iterations

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        k = compiled.kernel(compiled.LTR, state.n, ip=[self.starvation_steps, self.boost_steps], F=self.score,
                            I_cols=3)
        k.I[:, 0], k.I[:, 1], k.I[:, 2] = self.mark, self.boost_left, self.boost_seq
        k.ip[compiled.G], k.ip[compiled.G + 1] = self.iterations, self._seq
        return k
