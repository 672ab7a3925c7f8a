"""`lapsbench sweep`: run a scenario over a grid of overrides and search for the capacity under an SLO.

A sweep is a base scenario plus axes over dotted key paths ("trace.rate_scale", "speculation.k", "scheduler",
...). Every point is resolved and validated with `parse_scenario` before anything runs, and is identified by
a hash of its resolved scenario (trace and profile files by content), so a point's results depend only on
what it simulates — never on the worker, the backend, or the order points ran in. Each point is written
atomically to `OUT/points/<name>/`, named by its axis values (the hash is kept in point.json and
summary.csv); a re-run skips points that finished, so an interrupted sweep loses at most the points in
flight. See docs/sweeps.md."""

from lapsbench.run.sweep.definition import Axis, CapacitySpec, Point, Sweep
from lapsbench.run.sweep.driver import SweepResult, run_sweep, run_sweep_with_progress
from lapsbench.run.sweep.parse import load_sweep
from lapsbench.run.sweep.points import NAME_MAX, grid_overrides, grid_points, point_name, resolve_point
from lapsbench.run.sweep.table import print_sweep

__all__ = ["NAME_MAX", "Axis", "CapacitySpec", "Point", "Sweep", "SweepResult", "grid_overrides", "grid_points",
           "load_sweep", "point_name", "print_sweep", "resolve_point", "run_sweep", "run_sweep_with_progress"]
