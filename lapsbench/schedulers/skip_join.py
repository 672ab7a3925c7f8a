"""Skip-join MLFQ (FastServe, Wu et al.; baselines.md §2).

`levels` queues with quanta q_i = q_1 · `ratio`^i of processing time. q_1 = `base_quantum_s`, or, when
0 (default), one decode step of a request with the workload's median prompt at batch size 1 (FastServe
sets q_1 to one decode iteration). Skip-join: on arrival a request joins the highest queue whose quantum
covers its prefill (first-step) time. Within a queue: FCFS by entry into the queue. After using its
quantum a request is demoted to the next queue whose quantum covers its current step time (FastServe's η;
normally one level); the last queue keeps it. Starvation guard: a request that has waited (not been
served) for at least `starve_limit_s` is promoted to the top queue (0 = off, the default: FastServe's value
is not published — one reading note says 300 ms). Preemptive at step boundaries."""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from lapsbench.models.cost import sd_step_s
from lapsbench.schedulers._common import (
    UNIT_CODE,
    UNIT_SECONDS,
    UNITS,
    attained,
    batch1_prefill_s,
    decode_step_s,
    enter_level,
    need_at_least,
    need_choice,
    need_non_negative,
    need_ratio,
    promote_idle,
)
from lapsbench.schedulers.base import Scheduler, register
from lapsbench.schedulers.jit import njit


class SkipJoinPacked(NamedTuple):
    unit: int
    levels: int
    starve_limit_s: float
    quanta: np.ndarray          # float64 by level
    step_s: np.ndarray          # float64: batch-1 decode step time by context (unit seconds; else empty)
    level: np.ndarray           # int64 per request
    seq: np.ndarray             # int64: order of level entries
    entry_attained: np.ndarray  # float64
    entry_s: np.ndarray         # float64
    counters: np.ndarray        # int64[1]: entry sequence counter


@register
@dataclass(frozen=True)
class SkipJoinMLFQ(Scheduler):
    base_quantum_s: float = 0.0
    ratio: float = 2.0
    levels: int = 8
    starve_limit_s: float = 0.0
    unit: str = "seconds"

    name = "skip-join-mlfq"
    summary = "FastServe skip-join MLFQ: join the queue whose quantum covers the prefill; FCFS per queue"

    def __post_init__(self) -> None:
        need_non_negative("base_quantum_s", self.base_quantum_s)
        need_ratio("ratio", self.ratio)
        need_at_least("levels", self.levels, 1)
        need_non_negative("starve_limit_s", self.starve_limit_s)
        need_choice("unit", self.unit, UNITS)

    def pack(self, state) -> SkipJoinPacked:
        n = state.n
        base = self.base_quantum_s
        if base == 0:  # one decode step of the median-prompt request (one step of service in other units)
            median = np.array([int(np.median(state.prompt_tokens)) if n else 1])
            base = float(sd_step_s(state.cost, state.k, np.ones(1), median)[0]) if self.unit == "seconds" else 1.0
        q = base * self.ratio ** np.arange(self.levels, dtype=np.float64)
        seconds = self.unit == "seconds"
        first = batch1_prefill_s(state.cost, state.k, state.prompt_tokens) if seconds else np.ones(n)
        level = np.minimum(np.searchsorted(q, first, side="left"), self.levels - 1).astype(np.int64)
        step = np.zeros(0)
        if seconds:  # for the demotion's skip
            step = decode_step_s(state, np.arange(int((state.prompt_tokens + state.output_tokens).max(initial=0)) + 1))
        return SkipJoinPacked(UNIT_CODE[self.unit], self.levels, float(self.starve_limit_s), q,
                              np.ascontiguousarray(step, np.float64), level, np.zeros(n, np.int64), np.zeros(n),
                              state.arrival_s.astype(np.float64), np.zeros(1, np.int64))

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        return float(P.level[i]), P.entry_s[i], float(P.seq[i])

    @staticmethod
    @njit(cache=True)
    def observe(P, R, served, m, end):
        for j in range(m):
            r = served[j]
            lv = P.level[r]
            service = attained(R, P.unit, r)
            if lv < P.levels - 1 and service - P.entry_attained[r] >= P.quanta[lv]:
                nxt = lv + 1
                if P.unit == UNIT_SECONDS and not R.done[r]:
                    ctx = R.prompt_tokens[r] + R.generated[r]
                    nxt = max(nxt, np.searchsorted(P.quanta, P.step_s[ctx], side="left"))
                enter_level(P, r, min(nxt, P.levels - 1), service, end)
        if P.starve_limit_s > 0:
            return promote_idle(P, R, P.unit, end, P.starve_limit_s)
        return False
