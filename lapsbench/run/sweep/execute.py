"""Running points on a backend: the choice of backend, started only when a point needs running, and the
counts of the progress bar; finished points are skipped (resumability)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lapsbench.errors import LapsbenchError
from lapsbench.fsutil import atomic_dir
from lapsbench.run.sweep.definition import Point, Sweep
from lapsbench.run.sweep.local import LocalBackend
from lapsbench.run.sweep.ray_backend import RayBackend
from lapsbench.run.sweep.tasks import Events, Outcome, Task, point_done

BACKENDS = ("local", "ray")


class LazyBackend:
    """Starts the real backend on the first point that needs running, so resuming a finished sweep never
    starts a pool or a Ray instance."""

    def __init__(self, backend: str, workers: int, address: str | None) -> None:
        if backend not in BACKENDS:
            raise LapsbenchError(f"--backend: {backend!r} — expected one of {list(BACKENDS)}")
        if workers < 1:
            raise LapsbenchError(f"--workers: {workers} — expected an integer >= 1")
        if address and backend != "ray":
            raise LapsbenchError("--address: only used with --backend ray")
        self.backend, self.workers, self.address = backend, workers, address
        self._real: LocalBackend | RayBackend | None = None

    def run(self, tasks: list[Task], events: Events) -> list[Outcome]:
        if self._real is None:
            self._real = (RayBackend(self.workers, self.address) if self.backend == "ray"
                          else LocalBackend(self.workers))
        return self._real.run(tasks, events)

    def close(self) -> None:
        if self._real is not None:
            self._real.close()


class Tally:
    """Counts for the progress bar: done (of which cached), running, failed, out of total."""

    def __init__(self, bar: Any = None) -> None:
        self.total = self.done = self.cached = self.running = self.failed = 0
        self.bar = bar
        self.task = bar.add_task("", total=None) if bar is not None else None
        self.errors: dict[str, str] = {}

    def refresh(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=self.total, completed=self.done + self.failed, description=(
                f"points: {self.done} done ({self.cached} cached), {self.running} running, {self.failed} failed"))

    def event(self, kind: str, tid: str, outcome: Outcome | None) -> None:
        if kind == "start":
            self.running += 1
        else:
            self.running -= 1
            assert outcome is not None
            if outcome.ok:
                self.done += 1
            else:
                self.failed += 1
                self.errors[tid] = outcome.error
        self.refresh()


def execute_points(sweep: Sweep, points: list[Point], backend: Any, tally: Tally) -> dict[str, Outcome]:
    """Run the points not finished before; a finished point is counted as cached and not touched."""
    outcomes: dict[str, Outcome] = {}
    tasks = []
    tally.total += len(points)
    for p in points:
        if point_done(p):
            outcomes[p.id] = Outcome(p.id, True, cached=True)
            tally.done += 1
            tally.cached += 1
        else:
            tasks.append(Task(p.id, p.scenario, p.overrides, p.kind, p.name))
    tally.refresh()
    folders = {p.id: Path(p.scenario.output.dir) for p in points}
    for o in backend.run(tasks, tally.event) if tasks else []:
        outcomes[o.id] = o
        target = folders[o.id]
        if not o.ok and not target.exists():  # the worker died before it could record the error
            with atomic_dir(target) as tmp:
                (tmp / "error.txt").write_text(o.error + "\n")
    return outcomes
