"""The capacity search: per grid combination and scheduler, the highest load meeting the SLO, by bisection."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from lapsbench.config.scenario import set_key
from lapsbench.run.sweep.definition import Point, Sweep
from lapsbench.run.sweep.execute import Tally, execute_points
from lapsbench.run.sweep.merge import cell, override_column
from lapsbench.run.sweep.points import grid_overrides, resolve_point, unique_points
from lapsbench.run.sweep.tasks import Outcome


@dataclass
class Search:
    """One bisection: the load `key` of a context (grid combination) for one scheduler."""

    context: dict[str, Any]
    scheduler: str
    scheduler_table: dict[str, Any]
    lo: float
    hi: float
    status: str = "pending"   # pending | searching | ok | below-lo | at-least-hi | failed
    probes: int = 0
    error: str = ""
    lo_metrics: dict[str, float] = field(default_factory=dict)


def _probe(sweep: Sweep, s: Search, value: float) -> Point:
    cap = sweep.capacity
    assert cap is not None
    return resolve_point(sweep, {**s.context, cap.key: value, "scheduler": [s.scheduler_table]}, "capacity",
                         shown={"scheduler": s.scheduler, **s.context, cap.key: value})  # an axis "scheduler" wins


def _meets(sweep: Sweep, point: Point, label: str) -> tuple[bool, dict[str, float]]:
    cap = sweep.capacity
    assert cap is not None
    summary = pl.read_csv(Path(point.scenario.output.dir) / "summary.csv")
    row = summary.filter(pl.col("scheduler") == label).row(0, named=True)
    values = {m: float(row[m]) for m in cap.slo}
    return all(math.isfinite(values[m]) and values[m] <= limit for m, limit in cap.slo.items()), values


def capacity_search(sweep: Sweep, backend: Any, tally: Tally, all_points: list[Point]) -> pl.DataFrame:
    """Per context and scheduler, the highest `key` meeting every SLO bound, by bisection to `tolerance`.
    Assumes the SLO metrics grow with load (true for FCFS under a rate scale, which stretches a fixed
    sample path: waiting times are monotone in it); every probe is a cached point. Searches run in
    lock-step rounds so a round's probes run in parallel."""
    cap = sweep.capacity
    assert cap is not None
    searches = []
    for context in grid_overrides(sweep) if sweep.axes else [{}]:
        data = copy.deepcopy(sweep.base)
        for k, v in context.items():
            set_key(data, k, copy.deepcopy(v))
        raw = data.get("scheduler")
        tables = [raw] if isinstance(raw, dict) else list(raw or [])
        for table in tables:
            searches.append(Search(context, table.get("label", table["name"]), table, cap.lo, cap.hi))

    def run_round(probes: list[tuple[Search, float]]) -> list[tuple[Search, float, Point, Outcome]]:
        pts = [_probe(sweep, s, v) for s, v in probes]
        unique = unique_points(pts)
        by_id = {u.id: u for u in unique}
        pts = [by_id[p.id] for p in pts]  # a duplicate probe reads the results where its twin ran
        all_points.extend(unique)
        outcomes = execute_points(sweep, unique, backend, tally)
        return [(s, v, p, outcomes[p.id]) for (s, v), p in zip(probes, pts, strict=True)]

    # Round 0: both ends of every search.
    ends = run_round([(s, v) for s in searches for v in (cap.lo, cap.hi)])
    for (s, _, p_lo, o_lo), (_, _, p_hi, o_hi) in zip(ends[0::2], ends[1::2], strict=True):
        s.probes = 2
        if not (o_lo.ok and o_hi.ok):
            s.status, s.error = "failed", (o_lo.error or o_hi.error)
            continue
        lo_ok, lo_vals = _meets(sweep, p_lo, s.scheduler)
        hi_ok, hi_vals = _meets(sweep, p_hi, s.scheduler)
        if not lo_ok:
            s.status = "below-lo"
        elif hi_ok:
            s.status, s.lo, s.lo_metrics = "at-least-hi", cap.hi, hi_vals
        else:
            s.status, s.lo_metrics = "searching", lo_vals
    while True:
        active = [s for s in searches if s.status == "searching" and s.hi - s.lo > cap.tolerance]
        for s in searches:
            if s.status == "searching" and s not in active:
                s.status = "ok"
        if not active:
            break
        for s, mid, point, outcome in run_round([(s, (s.lo + s.hi) / 2) for s in active]):
            s.probes += 1
            if not outcome.ok:
                s.status, s.error = "failed", outcome.error
                continue
            ok, vals = _meets(sweep, point, s.scheduler)
            if ok:
                s.lo, s.lo_metrics = mid, vals
            else:
                s.hi = mid
    rows = []
    for s in searches:
        row: dict[str, Any] = {override_column(k): cell(v) for k, v in s.context.items()}
        found = s.status in ("ok", "at-least-hi")
        row.update({"scheduler": s.scheduler, "key": cap.key, "capacity": s.lo if found else None,
                    "upper": s.hi if s.status == "ok" else None, "status": s.status, "probes": s.probes})
        for m in cap.slo:
            row[f"{m}_at_capacity"] = s.lo_metrics.get(m)
        row["error"] = s.error
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)
