"""Finished points merged into the sweep's tables: the hive-partitioned dataset and summary.csv."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from lapsbench.fsutil import atomic_dir, atomic_file
from lapsbench.run.sweep.definition import Point, Sweep
from lapsbench.run.sweep.tasks import point_done


def override_column(key: str) -> str:
    """Override column name: the key path; top-level keys get `scenario.` so they never clash with results."""
    return key if "." in key else f"scenario.{key}"


def cell(value: Any) -> Any:
    """A value as a table cell: a scalar as it is, anything else as sorted JSON."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def _override_columns(points: list[Point]) -> dict[str, pl.DataType]:
    """One dtype per override key over all points (ints widen to floats, anything else to JSON strings)."""
    kinds: dict[str, set[type]] = {}
    for p in points:
        for k, v in p.overrides.items():
            kinds.setdefault(k, set()).add(type(cell(v)))
    out: dict[str, pl.DataType] = {}
    for k, ts in kinds.items():
        if ts <= {bool}:
            out[k] = pl.Boolean()
        elif ts <= {int}:
            out[k] = pl.Int64()
        elif ts <= {int, float}:
            out[k] = pl.Float64()
        else:
            out[k] = pl.String()
    return out


def _override_exprs(p: Point, dtypes: dict[str, pl.DataType]) -> list[pl.Expr]:
    exprs = []
    for k, dtype in dtypes.items():
        v = p.overrides.get(k)
        v = None if v is None else (cell(v) if not isinstance(dtype, pl.String) else
                                    (v if isinstance(v, str) else json.dumps(v, sort_keys=True)))
        exprs.append(pl.lit(v, dtype=dtype).alias(override_column(k)))
    return exprs


def merge(sweep: Sweep, points: list[Point]) -> pl.DataFrame:
    """Finished points → `OUT/dataset/point_id=<id>/part.parquet` (hive-partitioned by hash, a `point`
    column with the folder name and override columns added) and `OUT/summary.csv` (one row per point and
    scheduler: point, point_id, kind, overrides, metrics). Both are rebuilt atomically on every run."""
    dtypes = _override_columns(points)
    summaries = []
    with atomic_dir(sweep.out / "dataset") as tmp:
        for p in points:
            src = Path(p.scenario.output.dir)
            if not point_done(p):
                continue
            part = tmp / f"point_id={p.id}"
            part.mkdir()
            exprs = [pl.lit(p.name).alias("point"), *_override_exprs(p, dtypes)]
            pl.read_parquet(src / "requests.parquet").with_columns(exprs).write_parquet(
                part / "part.parquet", compression="zstd")
            summary = pl.read_csv(src / "summary.csv")
            summaries.append(summary.select(exprs[0], pl.lit(p.id).alias("point_id"), pl.lit(p.kind).alias("kind"),
                                            *exprs[1:], pl.all()))
    merged = pl.concat(summaries, how="diagonal_relaxed") if summaries else pl.DataFrame()
    with atomic_file(sweep.out / "summary.csv") as tmp_file:
        merged.write_csv(tmp_file)
    return merged
