"""Points of a sweep: the axes' combinations, each resolved into a validated scenario, identified by a hash
of what it simulates (trace and profile files by content) and named by its axis values."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
from typing import Any

import numpy as np

from lapsbench.config.scenario import Scenario, blamed_keys, parse_scenario, scenario_to_toml, set_key
from lapsbench.errors import LapsbenchError
from lapsbench.run.sweep.definition import Point, Sweep


def _file_hash(sweep: Sweep, path: str) -> str:
    if path not in sweep._file_hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        sweep._file_hashes[path] = digest.hexdigest()
    return sweep._file_hashes[path]


def _pin_files(sweep: Sweep, s: Scenario) -> tuple[Scenario, Scenario]:
    """(the scenario with absolute file paths for any worker, the same with its trace and profile named by
    content: the trace file's hash, or a `[trace] synth` table's hash of its parameters and seed)."""
    from lapsbench.run.assembly import profile_path, trace_sha256, with_absolute_paths

    digest = trace_sha256(s, lambda path: _file_hash(sweep, str(path.resolve())))
    run = with_absolute_paths(s)
    ident = dataclasses.replace(s, trace=dataclasses.replace(s.trace, path=f"sha256:{digest}", synth={}))
    if isinstance(s.model.profile, str):
        prof = profile_path(s).resolve()
        run = dataclasses.replace(run, model=dataclasses.replace(run.model, profile=str(prof)))
        ident = dataclasses.replace(ident, model=dataclasses.replace(
            ident.model, profile=f"sha256:{_file_hash(sweep, str(prof))}"))
    return run, ident


def _identity_text(ident: Scenario) -> str:
    """The resolved scenario minus what does not change results (name, output dir, base dir)."""
    return scenario_to_toml(dataclasses.replace(ident, name="point", output=dataclasses.replace(ident.output, dir=""),
                                                base_dir=""))


def resolve_point(sweep: Sweep, overrides: dict[str, Any], kind: str = "grid",
                  shown: dict[str, Any] | None = None) -> Point:
    """The point of `overrides` on the base scenario, validated; its folder is named by `shown` (default:
    the overrides)."""
    data = copy.deepcopy(sweep.base)
    for key, value in overrides.items():
        try:
            set_key(data, key, copy.deepcopy(value))
        except LapsbenchError as exc:
            raise LapsbenchError(f"axis {key!r}: {exc}") from None
    try:
        scenario = parse_scenario(data, sweep.base_dir)
        run, ident = _pin_files(sweep, scenario)
    except LapsbenchError as exc:
        raise LapsbenchError(_blame(overrides, str(exc))) from None
    pid = hashlib.sha256(_identity_text(ident).encode()).hexdigest()[:16]
    name = point_name(overrides if shown is None else shown, pid)
    run = dataclasses.replace(run, output=dataclasses.replace(run.output, dir=str(sweep.points_dir / name)))
    return Point(pid, overrides, run, kind, name)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
NAME_MAX = 120


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return repr(value) if isinstance(value, float) else str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def point_name(shown: dict[str, Any], pid: str) -> str:
    """A point's folder name: `key=value,key=value` from its axis values, safe characters only. When
    that spelling is not exact (characters replaced, a list or table value, too long) the first 8
    characters of the point's hash are appended, so two points never share a folder."""
    if not shown:
        return "base"
    parts, exact = [], True
    for key, value in shown.items():
        text = _value_text(value)
        safe_key, safe = _UNSAFE.sub("_", key).strip("_"), _UNSAFE.sub("_", text).strip("_")
        exact = exact and safe_key == key and safe == text and isinstance(value, (bool, int, float, str))
        parts.append(f"{safe_key}={safe}")
    name = ",".join(parts)
    return name if exact and len(name) <= NAME_MAX else f"{name[:NAME_MAX]}-{pid[:8]}"


def _blame(overrides: dict[str, Any], message: str) -> str:
    """Prefix a validation error with the axis (key = value) it comes from, or 'base scenario'."""
    if not overrides:
        return f"base scenario: {message}"
    culprits = blamed_keys(message, list(overrides))
    parts = []
    for k in culprits or list(overrides):
        text = json.dumps(overrides[k], default=str)
        parts.append(f"{k!r} = {text if len(text) <= 60 else text[:57] + '...'}")
    return f"axis {', '.join(parts)}: {message}"


def grid_overrides(sweep: Sweep) -> list[dict[str, Any]]:
    """The axes' combinations, in file order: grid = product, zip = i-th values together, random = samples."""
    if not sweep.axes:
        return [{}]
    keys = [a.key for a in sweep.axes]
    if sweep.mode == "grid":
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(a.values for a in sweep.axes))]
    if sweep.mode == "zip":
        return [dict(zip(keys, combo, strict=True)) for combo in zip(*(a.values for a in sweep.axes), strict=True)]
    g = np.random.default_rng(sweep.seed)
    rows = []
    for _ in range(sweep.samples):
        row: dict[str, Any] = {}
        for a in sweep.axes:
            if a.dist is None:
                row[a.key] = a.values[int(g.integers(len(a.values)))]
            elif a.dist[0] == "uniform":
                row[a.key] = float(g.uniform(a.dist[1], a.dist[2]))
            elif a.dist[0] == "loguniform":
                row[a.key] = float(math.exp(g.uniform(math.log(a.dist[1]), math.log(a.dist[2]))))
            else:
                row[a.key] = int(g.integers(int(a.dist[1]), int(a.dist[2]) + 1))
        rows.append(row)
    return rows


def unique_points(points: list[Point]) -> list[Point]:
    """Points that simulate the same scenario (same id) once each: the first one, with its folder."""
    seen: dict[str, Point] = {}
    for p in points:
        seen.setdefault(p.id, p)
    return list(seen.values())


def grid_points(sweep: Sweep) -> list[Point]:
    """Every grid point, resolved and validated; duplicates (same resolved scenario) appear once."""
    return unique_points([resolve_point(sweep, overrides) for overrides in grid_overrides(sweep)])


def definition_hash(sweep: Sweep) -> str:
    """What makes two sweeps the same: the resolved base scenario and every axis, mode and search setting."""
    payload = {
        "name": sweep.name, "mode": sweep.mode, "samples": sweep.samples, "seed": sweep.seed,
        "base_point": resolve_point(sweep, {}).id,
        "axes": [[a.key, list(a.values), list(a.dist) if a.dist else None] for a in sweep.axes],
        "capacity": dataclasses.asdict(sweep.capacity) if sweep.capacity else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
