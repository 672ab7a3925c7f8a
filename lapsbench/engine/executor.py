"""The replay's decision loop and the executor interface, with the executor that runs nothing.

Batched modes run the batched engine's own step phases from Python (lapsbench.engine.batched.run_batched with
an executor); batch 1 runs `replay_single`: one step at a time, everyone re-ranked before every step, each step
handed to the executor. With `SimulatedExecutor` it is the step-by-step specification of the compiled batch-1
engine (tests/reference_engine.py). The policy decides at every step boundary from the executor's clock;
accepted tokens come from the replication's step table, as in the simulator."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lapsbench.engine.context import BatchStep
from lapsbench.engine.state import EngineState
from lapsbench.engine.steplog import StepLog
from lapsbench.engine.steptable import NS, StepTable, to_ns
from lapsbench.schedulers.base import Scheduler
from lapsbench.schedulers.stepwise import Bound

EMPTY = np.empty(0, np.int64)


class SimulatedExecutor:
    """Executes nothing: a step ends at its start plus the cost model's price, so a replay through it
    reproduces `lapsbench run` exactly. Subclasses run steps for real (`execute`) against a real clock.

    Times are in the loop's unit: integer ns at batch 1 (as the batch-1 simulator), float seconds batched."""

    name = "simulated"

    def __init__(self) -> None:
        self.log = StepLog()
        self.scale = 1.0  # seconds per time unit of the run in progress

    def prepare(self, prompt: np.ndarray, output: np.ndarray, k: int, kv_capacity_tokens: float,
                max_batch: int, block_size: int) -> None:
        """Before any run: size resources for the workload; a LapsbenchError if it cannot be served."""

    def begin(self, state: EngineState, label: str, replication: int, unit_ns: bool) -> None:
        """A new run: the clock restarts at 0 and no request holds KV."""
        self.log.begin(label, replication)
        self.scale = 1.0 / NS if unit_ns else 1.0

    def step(self, step: BatchStep, start: float, price: float) -> tuple[float, float]:
        """Execute `step`, decided at `start` and priced at `price`; its end and duration on this clock."""
        gpu_ms = self.execute(step)
        end, took = self.clock(start, price)
        self.log.add(step, start * self.scale, took * self.scale * 1000.0, gpu_ms)
        return end, took

    def execute(self, step: BatchStep) -> float | None:
        """Run the step; returns its GPU time in ms if measured."""
        return None

    def clock(self, start: float, price: float) -> tuple[float, float]:
        """When the step just executed ended, and how long it took."""
        return start + price, price

    def wait_until(self, t: float) -> float:
        return t

    def finish(self) -> None:
        """After the last run: check or release what the runs left (a LapsbenchError if they left it wrong)."""

    def compiling(self, started: bool) -> None:
        """numba starts (True) or ends (False) compiling during the run: a real clock leaves that time out, as a
        real engine's scheduler is compiled before it serves."""

    def meta(self) -> dict:
        """What meta.json records about the executor."""
        return {"executor": self.name}


def replay_single(state: EngineState, policy: Scheduler, table: StepTable, executor: SimulatedExecutor,
                  progress: Callable[[int], None] | None = None, bound: Bound | None = None) -> EngineState:
    """Batch-1 serving, one step at a time, each step run by `executor` (times in integer ns). `bound`: the
    scheduler bound to `state` (packed here if None; tests read its packed tuple after the run).

    Before each step everyone present is re-ranked and after it the step is booked, in one compiled call each
    (lapsbench.schedulers.stepwise), so the host time between steps is a few µs for every policy; Python only
    builds the BatchStep and calls the executor."""
    arrival = to_ns(state.arrival_s)
    bound = Bound(policy, state) if bound is None else bound
    out, k, preemptive = state.out, state.k, bool(policy.preemptive)
    now, last, finished = 0, -1, 0
    attained = np.zeros(state.n, np.int64)
    active = np.empty(max(state.n, 1), np.int64)
    served = np.empty(1, np.int64)
    while finished < state.n:
        chosen, admitted = bound.choose_single(out, arrival, now, last, preemptive, active)
        if chosen < 0:
            now = executor.wait_until(int(arrival[admitted]))
            continue
        j = int(state.steps[chosen])
        tokens, ns = table.step(chosen, j)
        drafts = table.drafts(chosen, j, k)
        idx = np.array([chosen])
        if j == 0:  # the prefill of the whole prompt, emitting the first token
            step = BatchStep(k, EMPTY, EMPTY, EMPTY, idx, state.prompt_tokens[idx], np.zeros(1, np.int64),
                             np.ones(1, bool), ~state.done)
        else:
            step = BatchStep(drafts, idx, state.prompt_tokens[idx] + state.generated[idx], np.array([tokens]),
                             EMPTY, EMPTY, EMPTY, np.zeros(0, bool), ~state.done)
        now, took = executor.step(step, now, ns)
        if bound.serve_single(out, chosen, tokens, took, now, drafts, attained, served):  # drafts: the step's K
            finished += 1
            if progress is not None:
                progress(finished)
        last = chosen
    return state
