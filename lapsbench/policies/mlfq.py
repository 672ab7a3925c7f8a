"""MLFQ as re-implemented by vllm-ltr (baselines.md §2): every request starts at level 0; level p has a
quantum of `base_quantum_s` · `ratio`^p seconds of processing time (30 ms · 2^p); a request that has used
its level's quantum moves one level down; levels are unbounded. Within a level, vllm-ltr re-inserts the
request it just ran at the *front* of its (possibly new) level, so the request that entered a level last
goes first (`within_level = "front"`, default); new arrivals queue FCFS at level 0. `within_level =
"fifo"` is the textbook variant (FCFS by level entry). Optional starvation guard: every
`promote_period` engine iterations, requests idle (not served) for at least `promote_idle_s` seconds go
back to level 0 (0 = off, the default; vllm-ltr's value is 3 s).

`unit` = "seconds" (processing time, default), "steps" or "tokens" measures the quanta. Preemptive at
step boundaries."""

from dataclasses import dataclass

import numpy as np

from lapsbench.errors import LapsbenchError
from lapsbench.policies import compiled
from lapsbench.policies._common import (
    UNITS,
    attained,
    need_choice,
    need_non_negative,
    need_positive,
    need_ratio,
    steps_before_crossing,
)
from lapsbench.policies.base import INF_STEPS, Plan, Policy, register
from lapsbench.state import EngineState


@register
@dataclass
class MLFQ(Policy):
    base_quantum_s: float = 0.03
    ratio: float = 2.0
    unit: str = "seconds"
    within_level: str = "front"
    promote_idle_s: float = 0.0
    promote_period: int = 100

    name = "mlfq"
    preemptive = True
    observes_each_step = True  # demotes at most one level per observed run
    summary = "multi-level feedback queue (vllm-ltr: 30 ms·2^level quanta, all start at level 0)"

    def __post_init__(self) -> None:
        need_positive("base_quantum_s", self.base_quantum_s)
        need_ratio("ratio", self.ratio)
        need_choice("unit", self.unit, UNITS)
        need_choice("within_level", self.within_level, ("front", "fifo"))
        need_non_negative("promote_idle_s", self.promote_idle_s)
        if self.promote_period < 1:
            raise LapsbenchError(f"scheduler.promote_period: {self.promote_period!r} — expected an integer >= 1")

    def prepare(self, state: EngineState) -> None:
        n = state.n
        self.level = np.zeros(n, np.int64)
        self.entry_attained = np.zeros(n, np.float64)  # attained service when the level was entered
        self.entry_s = state.arrival_s.copy()          # time the level was entered
        self.entry_seq = np.zeros(n, np.int64)         # tie-break: order of entries at the same time
        self._seq = 0
        self.iterations = 0

    def quantum(self, level: np.ndarray) -> np.ndarray:
        return self.base_quantum_s * self.ratio ** np.asarray(level, np.float64)

    def rank(self, state: EngineState, active: np.ndarray, now: float) -> tuple[np.ndarray, ...]:
        level = self.level[active]
        if self.within_level == "fifo":
            return level, self.entry_s[active], self.entry_seq[active]
        # front: the latest re-entry first; arrivals (never re-entered) queue FCFS behind them
        arrival_entry = (self.entry_seq[active] == 0).astype(np.int64)
        return level, arrival_entry, -self.entry_seq[active]

    def plan(self, state: EngineState, order: np.ndarray, now: float) -> Plan:
        r = int(order[0])
        used = float(attained(state, self.unit)[r]) - self.entry_attained[r]
        h = steps_before_crossing(state, r, self.unit, float(self.quantum(self.level[r])) - used)
        if self.promote_idle_s > 0:
            h = min(h, self.promote_period - self.iterations % self.promote_period)
        return Plan(order[:1], h if h < INF_STEPS else INF_STEPS)

    def observe(self, state: EngineState, served: np.ndarray, emitted: np.ndarray, end_s: np.ndarray) -> None:
        service = attained(state, self.unit)
        for r in np.unique(served):
            last = float(end_s[np.flatnonzero(served == r)[-1]])
            if service[r] - self.entry_attained[r] >= self.quantum(self.level[r]):
                self._enter(r, self.level[r] + 1, service[r], last)
        ends = np.unique(end_s)
        before = self.iterations
        self.iterations += ends.size
        if self.promote_idle_s > 0 and self.iterations // self.promote_period > before // self.promote_period:
            t = float(ends[-1])
            live = np.flatnonzero((state.arrival_s <= t) & ~state.done)
            idle = live[(t - state.last_service_s[live] >= self.promote_idle_s) & (self.level[live] > 0)]
            for r in idle:
                self._enter(int(r), 0, service[r], t)

    def _enter(self, r: int, level: int, service: float, t: float) -> None:
        self._seq += 1
        self.level[r] = level
        self.entry_attained[r] = service
        self.entry_s[r] = t
        self.entry_seq[r] = self._seq

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        # quanta by level, as `quantum` computes them, up to a level no request can reach (a quantum of 1e18,
        # or 2·10⁶ levels — 2·10⁶ quanta of service — for ratios barely above 1)
        levels = 1 if self.ratio == 1 else int(np.ceil(np.log(1e18 / self.base_quantum_s) / np.log(self.ratio))) + 1
        levels = min(levels, 2_000_000)
        k = compiled.kernel(compiled.MLFQ, state.n, fp=[self.promote_idle_s], T=self.quantum(np.arange(levels)),
                            ip=[compiled.UNIT_CODE[self.unit], int(self.within_level == "fifo"), self.promote_period],
                            F=np.column_stack((self.entry_attained, self.entry_s)), I_cols=2)
        k.I[:, 0], k.I[:, 1] = self.level, self.entry_seq
        k.ip[compiled.G], k.ip[compiled.G + 1] = self._seq, self.iterations
        return k
