"""Running a whole sweep: grid points, then the capacity search, then the merged tables and plots."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from lapsbench.fsutil import atomic_dir, atomic_file
from lapsbench.run.sweep.capacity import capacity_search
from lapsbench.run.sweep.definition import Sweep
from lapsbench.run.sweep.execute import LazyBackend, Tally, execute_points
from lapsbench.run.sweep.merge import merge, override_column
from lapsbench.run.sweep.points import grid_points, unique_points
from lapsbench.run.sweep.resume import claim, clean_stale, locked
from lapsbench.run.sweep.table import MAIN_METRICS


@dataclass
class SweepResult:
    out: Path
    points: int
    done: int
    cached: int
    failed: int
    errors: dict[str, str]    # point folder name → error line
    summary: pl.DataFrame
    capacity: pl.DataFrame | None
    wall_s: float
    axes: list[str] = field(default_factory=list)   # summary columns of the axes, in file order


def run_sweep(sweep: Sweep, backend: str = "local", workers: int | None = None, address: str | None = None,
              bar: Any = None, plots: bool = False) -> SweepResult:
    """Run (or resume) a sweep: grid points, then the capacity search; merge whatever finished; with
    `plots`, draw each main metric against each numeric axis into OUT/plots/."""
    start = time.perf_counter()
    points = grid_points(sweep)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    with locked(sweep.out):
        claim(sweep)
        clean_stale(sweep.points_dir)
        engine = LazyBackend(backend, workers, address)
        tally = Tally(bar)
        capacity = None
        try:
            run_grid = sweep.capacity is None or sweep.capacity.run_points
            if run_grid:
                execute_points(sweep, points, engine, tally)
            all_points = list(points) if run_grid else []
            if sweep.capacity is not None:
                capacity = capacity_search(sweep, engine, tally, all_points)
                with atomic_file(sweep.out / "capacity.csv") as tmp:
                    capacity.write_csv(tmp)
        finally:
            engine.close()
        unique = unique_points(all_points)
        summary = merge(sweep, unique)
        axes = [override_column(a.key) for a in sweep.axes]
        if plots:
            from lapsbench.results.plots import write_sweep_plots

            with atomic_dir(sweep.out / "plots") as tmp:
                write_sweep_plots(summary.filter(pl.col("kind") == "grid") if summary.height else summary, axes,
                                  sweep.mode, tmp, sweep.name, MAIN_METRICS)
    names = {p.id: p.name for p in unique}
    errors = {names.get(pid, pid): err for pid, err in tally.errors.items()}
    return SweepResult(sweep.out, len(unique), tally.done, tally.cached, tally.failed, errors, summary,
                       capacity, time.perf_counter() - start, axes)


def run_sweep_with_progress(sweep: Sweep, backend: str, workers: int | None, address: str | None,
                            quiet: bool, plots: bool = True) -> SweepResult:
    """`run_sweep` under a rich progress bar (points done / running / failed) unless quiet or not a tty."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        return run_sweep(sweep, backend, workers, address, plots=plots)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        return run_sweep(sweep, backend, workers, address, bar, plots=plots)
