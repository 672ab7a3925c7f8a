"""A sweep file → a validated `Sweep`: every key checked and every grid point resolved before anything runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lapsbench.config.scenario import apply_overrides, blamed_keys
from lapsbench.config.toml import read_toml
from lapsbench.errors import LapsbenchError
from lapsbench.run.sweep.definition import (
    CAPACITY_KEYS,
    DISTRIBUTIONS,
    MODES,
    SLO_METRICS,
    SWEEP_KEYS,
    Axis,
    CapacitySpec,
    Sweep,
)
from lapsbench.run.sweep.points import grid_points, resolve_point


def _number(value: Any, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LapsbenchError(f"{where}: {value!r} — expected a finite number")
    if positive and value <= 0:
        raise LapsbenchError(f"{where}: {value!r} — expected a number > 0")
    return float(value)


def _parse_axis(key: Any, raw: Any, mode: str) -> Axis:
    where = f"axes.{key!r}" if "." in str(key) else f"axes.{key}"
    if isinstance(raw, dict) and mode == "random":
        if len(raw) != 1 or next(iter(raw)) not in DISTRIBUTIONS:
            raise LapsbenchError(f"{where}: {raw!r} — expected a list of values or one of "
                                 f"{{ uniform = [lo, hi] }}, {{ loguniform = [lo, hi] }}, {{ randint = [lo, hi] }}")
        kind, bounds = next(iter(raw.items()))
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise LapsbenchError(f"{where}.{kind}: {bounds!r} — expected [lo, hi]")
        lo, hi = (_number(b, f"{where}.{kind}", positive=kind == "loguniform") for b in bounds)
        if not lo < hi:
            raise LapsbenchError(f"{where}.{kind}: {bounds!r} — expected lo < hi")
        if kind == "randint" and not all(isinstance(b, int) for b in bounds):
            raise LapsbenchError(f"{where}.randint: {bounds!r} — expected integer bounds")
        return Axis(key, dist=(kind, lo, hi))
    if not isinstance(raw, list):
        extra = " (or, in random mode, a distribution table)" if mode == "random" else ""
        raise LapsbenchError(f"{where}: {raw!r} — expected a list of values{extra}")
    if not raw:
        raise LapsbenchError(f"{where}: empty — expected at least one value")
    return Axis(key, values=tuple(raw))


def _parse_capacity(raw: Any, axes: list[Axis]) -> CapacitySpec:
    if not isinstance(raw, dict):
        raise LapsbenchError(f"capacity: {raw!r} — expected a table")
    for k in raw:
        if k not in CAPACITY_KEYS:
            raise LapsbenchError(f"capacity.{k}: unknown key; valid keys: {', '.join(CAPACITY_KEYS)}")
    key = raw.get("key", "trace.rate_scale")
    if not isinstance(key, str) or not key:
        raise LapsbenchError(f"capacity.key: {key!r} — expected a dotted key path like \"trace.rate_scale\"")
    if any(a.key == key for a in axes):
        raise LapsbenchError(f"capacity.key: {key!r} is also an axis; the search sets it, so remove the axis")
    for name in ("lo", "hi", "tolerance"):
        if name not in raw:
            raise LapsbenchError(f"capacity.{name}: missing — expected a number")
    lo, hi = _number(raw["lo"], "capacity.lo", True), _number(raw["hi"], "capacity.hi", True)
    tol = _number(raw["tolerance"], "capacity.tolerance", True)
    if not lo < hi:
        raise LapsbenchError(f"capacity.hi: {hi!r} — expected a number > capacity.lo ({lo!r})")
    slo = raw.get("slo")
    if not isinstance(slo, dict) or not slo:
        raise LapsbenchError(f"capacity.slo: {slo!r} — expected a table like {{ jct_mean_s = 2.0 }}")
    for metric, limit in slo.items():
        if metric not in SLO_METRICS:
            raise LapsbenchError(f"capacity.slo.{metric}: unknown metric; valid: {', '.join(SLO_METRICS)}")
        _number(limit, f"capacity.slo.{metric}", positive=True)
    run_points = raw.get("run_points", False)
    if not isinstance(run_points, bool):
        raise LapsbenchError(f"capacity.run_points: {run_points!r} — expected true or false")
    return CapacitySpec(key, lo, hi, tol, {k: float(v) for k, v in slo.items()}, run_points)


def load_sweep(path: str | Path, out: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Parse and validate a sweep file, apply `--set KEY=VALUE` overrides to its base scenario, and resolve
    every grid point (unknown keys fail here, before runs)."""
    path = Path(path)
    data = read_toml(path, "sweep")
    try:
        sweep = _parse_sweep(data, path, out)
    except LapsbenchError as exc:
        raise LapsbenchError(f"{path}: {exc}") from None
    sweep.base, keys = apply_overrides(sweep.base, overrides)
    swept = [a.key for a in sweep.axes] + ([sweep.capacity.key] if sweep.capacity else [])
    for key in keys:
        if clash := blamed_keys(key, swept):
            raise LapsbenchError(f"--set {key}: the sweep varies {clash[0]!r} — expected a key that is neither "
                                 f"an axis nor the capacity key")
    try:
        resolve_point(sweep, {})  # the base alone first, so its errors are not blamed on an axis
    except LapsbenchError as exc:
        message = str(exc).removeprefix("base scenario: ")
        raise LapsbenchError(f"--set {message}" if blamed_keys(message, keys) else f"{path}: {exc}") from None
    try:
        grid_points(sweep)  # validates every point now
    except LapsbenchError as exc:
        raise LapsbenchError(f"{path}: {exc}") from None
    return sweep


def _parse_sweep(data: dict[str, Any], path: Path, out: str | Path | None) -> Sweep:
    for k in data:
        if k not in ("base", "scenario", "sweep", "axes", "capacity"):
            raise LapsbenchError(f"{k}: unknown key; valid keys: axes, base, capacity, scenario, sweep")
    if ("base" in data) == ("scenario" in data):
        raise LapsbenchError("base: expected exactly one of base = \"SCENARIO.toml\" or an inline [scenario] table")
    if "base" in data:
        if not isinstance(data["base"], str):
            raise LapsbenchError(f"base: {data['base']!r} — expected the path of a scenario TOML")
        base_path = Path(data["base"])
        if not base_path.is_absolute() and not base_path.exists():
            base_path = path.parent / base_path
        base = read_toml(base_path, "base scenario")
        base_dir = str(base_path.parent.resolve())
    else:
        if not isinstance(data["scenario"], dict):
            raise LapsbenchError("scenario: expected a table")
        base, base_dir = data["scenario"], str(path.parent.resolve())
    meta = data.get("sweep", {})
    if not isinstance(meta, dict):
        raise LapsbenchError("sweep: expected a table")
    for k in meta:
        if k not in SWEEP_KEYS:
            raise LapsbenchError(f"sweep.{k}: unknown key; valid keys: {', '.join(SWEEP_KEYS)}")
    name = meta.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise LapsbenchError(f"sweep.name: {name!r} — expected a non-empty string")
    mode = meta.get("mode", "grid")
    if mode not in MODES:
        raise LapsbenchError(f"sweep.mode: {mode!r} — expected one of {list(MODES)}")
    samples, seed = meta.get("samples", 0), meta.get("seed", 0)
    for key, v in (("samples", samples), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise LapsbenchError(f"sweep.{key}: {v!r} — expected an integer >= 0")
    if mode == "random" and samples < 1:
        raise LapsbenchError(f"sweep.samples: {samples!r} — random mode needs samples = N (N >= 1)")
    out_dir = Path(out) if out is not None else Path(meta.get("out", f"results/sweeps/{name}"))
    axes_raw = data.get("axes", {})
    if not isinstance(axes_raw, dict):
        raise LapsbenchError("axes: expected a table of \"key.path\" = [values]")
    axes = [_parse_axis(k, v, mode) for k, v in axes_raw.items()]
    if mode == "zip" and len({len(a.values) for a in axes}) > 1:
        lengths = ", ".join(f"{a.key}: {len(a.values)}" for a in axes)
        raise LapsbenchError(f"axes: zip mode needs axes of equal length ({lengths})")
    capacity = _parse_capacity(data["capacity"], axes) if "capacity" in data else None
    if not axes and capacity is None:
        raise LapsbenchError("axes: no axes and no [capacity] — nothing to sweep")
    return Sweep(name=name, mode=mode, out=out_dir, base=base, base_dir=base_dir, axes=axes, samples=samples,
                 seed=seed, capacity=capacity, source=path)
