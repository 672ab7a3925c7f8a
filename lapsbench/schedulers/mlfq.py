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
from typing import NamedTuple

import numpy as np

from lapsbench.schedulers._common import (
    UNIT_CODE,
    UNITS,
    attained,
    enter_level,
    need_at_least,
    need_choice,
    need_non_negative,
    need_positive,
    need_ratio,
    promote_idle,
)
from lapsbench.schedulers.base import Scheduler, register
from lapsbench.schedulers.jit import njit


class MLFQPacked(NamedTuple):
    unit: int
    fifo: bool
    promote_period: int
    promote_idle_s: float
    quanta: np.ndarray          # float64 by level, computed by numpy (numba's ** may differ in the last bit)
    level: np.ndarray           # int64 per request
    seq: np.ndarray             # int64: order of level entries (0 = never re-entered)
    entry_attained: np.ndarray  # float64: attained service when the level was entered
    entry_s: np.ndarray         # float64: when the level was entered
    counters: np.ndarray        # int64[2]: entry sequence counter, engine iterations


@register
@dataclass(frozen=True)
class MLFQ(Scheduler):
    base_quantum_s: float = 0.03
    ratio: float = 2.0
    unit: str = "seconds"
    within_level: str = "front"
    promote_idle_s: float = 0.0
    promote_period: int = 100

    name = "mlfq"
    summary = "multi-level feedback queue (vllm-ltr: 30 ms·2^level quanta, all start at level 0)"

    def __post_init__(self) -> None:
        need_positive("base_quantum_s", self.base_quantum_s)
        need_ratio("ratio", self.ratio)
        need_choice("unit", self.unit, UNITS)
        need_choice("within_level", self.within_level, ("front", "fifo"))
        need_non_negative("promote_idle_s", self.promote_idle_s)
        need_at_least("promote_period", self.promote_period, 1)

    def pack(self, state) -> MLFQPacked:
        # quanta by level up to one no request can reach (a quantum of 1e18, or 2·10⁶ levels for ratios
        # barely above 1); past the table's end the quantum stays at its last, astronomically large, value
        levels = 1 if self.ratio == 1 else int(np.ceil(np.log(1e18 / self.base_quantum_s) / np.log(self.ratio))) + 1
        levels = min(levels, 2_000_000)
        n = state.n
        quanta = self.base_quantum_s * self.ratio ** np.arange(levels, dtype=np.float64)
        return MLFQPacked(UNIT_CODE[self.unit], self.within_level == "fifo", self.promote_period,
                          float(self.promote_idle_s), quanta, np.zeros(n, np.int64), np.zeros(n, np.int64),
                          np.zeros(n), state.arrival_s.astype(np.float64), np.zeros(2, np.int64))

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        level, seq = P.level[i], P.seq[i]
        if P.fifo:
            return float(level), P.entry_s[i], float(seq)
        # front: the latest re-entry first; arrivals (never re-entered) queue FCFS behind them
        return float(level), 1.0 if seq == 0 else 0.0, float(-seq)

    @staticmethod
    @njit(cache=True)
    def observe(P, R, served, m, end):
        for j in range(m):
            r = served[j]
            service = attained(R, P.unit, r)
            if service - P.entry_attained[r] >= P.quanta[min(P.level[r], P.quanta.size - 1)]:
                enter_level(P, r, P.level[r] + 1, service, end)
        before = P.counters[1]
        P.counters[1] += 1
        if P.promote_idle_s > 0 and P.counters[1] // P.promote_period > before // P.promote_period:
            return promote_idle(P, R, P.unit, end, P.promote_idle_s)
        return False
