"""The replay's decision loop timed by a step log (`lapsbench replay --executor logged --steps LOG`): every step
takes the time the log says it took, idle gaps end when the log's next step began, and each step the loop
schedules must be the log's (same decode and prefill counts and tokens), or the run stops with one line.

Run on a replay's own scenario.toml and steps.parquet, it is the simulator given the real engine's step times:
the per-request results equal the replay's when the scheduling is the same, which separates scheduling error
from step-time error. Its step log adds what the replay's log may lack (the chunk sums of docs/steplog.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.engine.context import BatchStep
from lapsbench.engine.executor import SimulatedExecutor
from lapsbench.engine.state import EngineState
from lapsbench.engine.steptable import NS
from lapsbench.errors import LapsbenchError

CHECKED = ("decode_requests", "context_tokens", "prefill_requests", "prefill_tokens", "prefill_context_tokens")


class LoggedExecutor(SimulatedExecutor):
    """Step times from a validated step log (lapsbench.calibrate.steplog.read_steplog), run by run."""

    name = "logged"

    def __init__(self, log: pl.DataFrame, path: Path) -> None:
        super().__init__()
        self.steps, self.path = log, path
        self.runs = {key: run.sort("step") for key, run in log.group_by(["scheduler", "replication"])}
        self.key: tuple[str, int] | None = None

    def check_runs(self, labels: list[str], replications: int) -> None:
        """Before any work: the log has a run for every scheduler label and replication."""
        have = sorted(self.runs)
        for label in labels:
            for r in range(replications):
                if (label, r) not in self.runs:
                    raise LapsbenchError(f"--steps: {self.path} has no steps of scheduler {label!r} replication "
                                         f"{r} (it has {', '.join(f'{a!r} rep {b}' for a, b in have)}); expected "
                                         "the step log of a replay of this scenario")

    def begin(self, state: EngineState, label: str, replication: int, unit_ns: bool) -> None:
        if self.key is not None:
            self.finish()
        super().begin(state, label, replication, unit_ns)
        run = self.runs[(label, replication)]
        self.key, self.j = (label, replication), 0
        unit = NS if unit_ns else 1.0
        start = run["start_s"].to_numpy() * unit
        took = run["wall_ms"].to_numpy() / 1000.0 * unit
        if unit_ns:  # the batch-1 loop's integer ns, as the replay logged them
            start, took = np.round(start).astype(np.int64), np.round(took).astype(np.int64)
        self.start, self.took = start, took
        self.counts = {c: run[c].to_numpy() for c in CHECKED}

    def _row(self) -> int:
        if self.j >= self.took.size:
            raise LapsbenchError(f"--steps: {self.path}: scheduler {self.key[0]!r} replication {self.key[1]}: the "
                                 f"loop runs more than the log's {self.took.size} steps; expected the step log of "
                                 "a replay of this scenario (its scenario.toml, seed and scheduler profile)")
        return self.j

    def step(self, step: BatchStep, start: float, price: float) -> tuple[float, float]:
        j = self._row()
        got = (step.decode.size, int(step.context.sum()), step.prefill.size, int(step.chunk.sum()),
               int(step.cached.sum()))
        for column, value in zip(CHECKED, got, strict=True):
            if value != self.counts[column][j]:
                raise LapsbenchError(
                    f"--steps: {self.path}: scheduler {self.key[0]!r} replication {self.key[1]} step {j}: the loop "
                    f"scheduled {column} = {value}, the log has {int(self.counts[column][j])}; expected the step "
                    "log of a replay of this scenario (its scenario.toml, seed and scheduler profile)")
        return super().step(step, start, price)

    def clock(self, start: float, price: float) -> tuple[float, float]:
        took = self.took[self.j].item()  # a Python int (batch-1 ns) or float (seconds), as the loop keeps time
        self.j += 1
        return start + took, took

    def wait_until(self, t: float) -> float:
        """Idle until the log's next step began (the real engine woke then), and not before `t`."""
        j = self._row()
        return max(self.start[j].item(), t)

    def finish(self) -> None:
        """After a run (the next `begin` calls it; replay_scenario, after the last): no steps of the log left
        over."""
        if self.key is not None and self.j != self.took.size:
            raise LapsbenchError(f"--steps: {self.path}: scheduler {self.key[0]!r} replication {self.key[1]}: the "
                                 f"loop ran {self.j} steps, the log has {self.took.size}; expected the step log of "
                                 "a replay of this scenario")
