"""Skip-join MLFQ (FastServe, Wu et al.; baselines.md §2).

`levels` queues with quanta q_i = q_1 · `ratio`^i of processing time. q_1 = `base_quantum_s`, or, when
0 (default), one decode step of a request with the workload's median prompt at batch size 1 (FastServe
sets q_1 to one decode iteration). Skip-join: on arrival a request joins the highest queue whose quantum
covers its prefill (first-step) time. Within a queue: FCFS by entry into the queue. After using its
quantum a request is demoted to the next queue whose quantum covers its current step time (FastServe's η;
normally one level); the last queue keeps it. Starvation guard: a request that has waited (not been
served) for at least `starve_limit_s` is promoted to the top queue (0 = off, the default: FastServe's value
is not published — one reading note says 300 ms; with the guard on, the engine re-plans every step).
Preemptive at step boundaries."""

from dataclasses import dataclass

import numpy as np

from lapsbench.costmodel import sd_step_s
from lapsbench.errors import LapsbenchError
from lapsbench.policies import compiled
from lapsbench.policies._common import (
    UNITS,
    attained,
    decode_step_s,
    need_choice,
    need_non_negative,
    need_ratio,
    prefill_step_s,
    steps_before_crossing,
)
from lapsbench.policies.base import INF_STEPS, Plan, Policy, register
from lapsbench.state import EngineState


@register
@dataclass
class SkipJoinMLFQ(Policy):
    base_quantum_s: float = 0.0
    ratio: float = 2.0
    levels: int = 8
    starve_limit_s: float = 0.0
    unit: str = "seconds"

    name = "skip-join-mlfq"
    preemptive = True
    observes_each_step = True  # demotes at most one level per observed run
    summary = "FastServe skip-join MLFQ: join the queue whose quantum covers the prefill; FCFS per queue"

    def __post_init__(self) -> None:
        need_non_negative("base_quantum_s", self.base_quantum_s)
        need_ratio("ratio", self.ratio)
        if self.levels < 1:
            raise LapsbenchError(f"scheduler.levels: {self.levels!r} — expected an integer >= 1")
        need_non_negative("starve_limit_s", self.starve_limit_s)
        need_choice("unit", self.unit, UNITS)

    def prepare(self, state: EngineState) -> None:
        n = state.n
        idx = np.arange(n)
        base = self.base_quantum_s
        if base == 0:  # one decode step of the median-prompt request (one step of service in other units)
            median = np.array([int(np.median(state.prompt_tokens)) if n else 1])
            base = float(sd_step_s(state.cost, state.k, np.ones(1), median)[0]) if self.unit == "seconds" else 1.0
        self.q = base * self.ratio ** np.arange(self.levels, dtype=np.float64)
        first = prefill_step_s(state, idx) if self.unit == "seconds" else np.ones(n)
        self.level = np.minimum(np.searchsorted(self.q, first, side="left"), self.levels - 1).astype(np.int64)
        self.entry_attained = np.zeros(n)
        self.entry_s = state.arrival_s.copy()
        self.entry_seq = np.zeros(n, np.int64)
        self._seq = 0

    def rank(self, state: EngineState, active: np.ndarray, now: float) -> tuple[np.ndarray, ...]:
        return self.level[active], self.entry_s[active], self.entry_seq[active]

    def plan(self, state: EngineState, order: np.ndarray, now: float) -> Plan:
        if self.starve_limit_s > 0 and order.size > 1:
            return Plan(order[:1], 1)
        r = int(order[0])
        if self.level[r] == self.levels - 1:
            return Plan(order[:1], INF_STEPS)
        used = float(attained(state, self.unit)[r]) - self.entry_attained[r]
        return Plan(order[:1], steps_before_crossing(state, r, self.unit, float(self.q[self.level[r]]) - used))

    def observe(self, state: EngineState, served: np.ndarray, emitted: np.ndarray, end_s: np.ndarray) -> None:
        service = attained(state, self.unit)
        for r in np.unique(served):
            lv = int(self.level[r])
            if lv < self.levels - 1 and service[r] - self.entry_attained[r] >= self.q[lv]:
                nxt = lv + 1
                if self.unit == "seconds" and not state.done[r]:
                    step = float(decode_step_s(state, np.array([state.prompt_tokens[r] + state.generated[r]]))[0])
                    nxt = max(nxt, int(np.searchsorted(self.q, step, side="left")))
                self._enter(int(r), min(nxt, self.levels - 1), float(service[r]),
                            float(end_s[np.flatnonzero(served == r)[-1]]))
        if self.starve_limit_s > 0:
            t = float(end_s[-1])
            live = np.flatnonzero((state.arrival_s <= t) & ~state.done)
            starving = live[(t - state.last_service_s[live] >= self.starve_limit_s) & (self.level[live] > 0)]
            for r in starving:
                self._enter(int(r), 0, float(service[r]), t)

    def _enter(self, r: int, level: int, service: float, t: float) -> None:
        self._seq += 1
        self.level[r] = level
        self.entry_attained[r] = service
        self.entry_s[r] = t
        self.entry_seq[r] = self._seq

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        step = np.zeros(0)
        if self.unit == "seconds":  # batch-1 decode step time by context, for the demotion's skip
            step = decode_step_s(state, np.arange(int((state.prompt_tokens + state.output_tokens).max(initial=0)) + 1))
        k = compiled.kernel(compiled.SKIP_JOIN, state.n, fp=[self.starve_limit_s],
                            ip=[compiled.UNIT_CODE[self.unit], self.levels],
                            F=np.column_stack((self.entry_attained, self.entry_s)), I_cols=2,
                            T=np.concatenate((self.q, step)))
        k.I[:, 0], k.I[:, 1] = self.level, self.entry_seq
        k.ip[compiled.G] = self._seq
        return k
