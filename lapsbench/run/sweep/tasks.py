"""One point run as a task: what a backend runs (in-process, in a spawned worker or a Ray task) and whether a
point's folder already holds its results."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lapsbench.config.scenario import Scenario
from lapsbench.fsutil import atomic_dir
from lapsbench.run.sweep.definition import Point


@dataclass(frozen=True)
class Task:
    id: str
    scenario: Scenario
    overrides: dict[str, Any]
    kind: str
    name: str = ""


@dataclass(frozen=True)
class Outcome:
    id: str
    ok: bool
    error: str = ""
    wall_s: float = 0.0
    cached: bool = False


# events(kind, task_id, outcome): kind is "start" or "finish"
Events = Callable[[str, str, Outcome | None], None]


def run_point(task: Task) -> Outcome:
    """Simulate one point and write its results directory atomically (a failure writes error.txt instead).
    Top-level and argument-only, so it runs the same in-process, in a spawned worker, or in a Ray task."""
    from lapsbench.run.output import write_results
    from lapsbench.run.runner import run_scenario

    start = time.perf_counter()
    target = Path(task.scenario.output.dir)
    info = {"point": task.name, "point_id": task.id, "kind": task.kind, "overrides": task.overrides}
    try:
        result = run_scenario(task.scenario)
        with atomic_dir(target) as tmp:
            write_results(tmp, task.scenario, result, f"lapsbench sweep (point {task.id})")
            (tmp / "point.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        return Outcome(task.id, True, wall_s=time.perf_counter() - start)
    except Exception as exc:  # a failed point is recorded and the sweep goes on
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with atomic_dir(target) as tmp:
            (tmp / "error.txt").write_text(traceback.format_exc())
            (tmp / "point.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        return Outcome(task.id, False, error=f"{type(exc).__name__}: {line}", wall_s=time.perf_counter() - start)


def point_done(p: Point) -> bool:
    """A point has finished when its folder has results of this very point (same hash in point.json)."""
    folder = Path(p.scenario.output.dir)
    if not (folder / "summary.csv").is_file():
        return False
    try:
        return json.loads((folder / "point.json").read_text()).get("point_id") == p.id
    except (OSError, ValueError, AttributeError):
        return False
