"""`lapsbench sweep`: run a scenario over a grid of overrides and search for the capacity under an SLO.

A sweep is a base scenario plus axes over dotted key paths ("trace.rate_scale", "speculation.k", "scheduler",
...). Every point is resolved and validated with `parse_scenario` before anything runs, and is identified by
a hash of its resolved scenario (trace and profile files by content), so a point's results depend only on
what it simulates — never on the worker, the backend, or the order points ran in. Each point is written
atomically to `OUT/points/<name>/`, named by its axis values (the hash is kept in point.json and
summary.csv); a re-run skips points that finished, so an interrupted sweep loses at most the points in
flight. See docs/sweeps.md."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench import __version__
from lapsbench.errors import LapsbenchError
from lapsbench.fsutil import atomic_dir, atomic_file
from lapsbench.scenario import Scenario, apply_overrides, blamed_keys, parse_scenario, scenario_to_toml, set_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODES = ("grid", "zip", "random")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
BACKENDS = ("local", "ray")
SWEEP_KEYS = ("name", "mode", "out", "samples", "seed")
CAPACITY_KEYS = ("key", "lo", "hi", "tolerance", "slo", "run_points")
# Latency metrics of the summary an SLO may bound (metric <= limit).
SLO_METRICS = tuple(f"{m}_{s}_s" for m in ("jct", "ttft", "tpot") for s in ("mean", "p50", "p90", "p99"))


# ------------------------------------------------------------------------------------------- definition

@dataclass(frozen=True)
class Axis:
    """One swept key: a list of values, or (random mode only) a distribution `(kind, lo, hi)`."""

    key: str
    values: tuple[Any, ...] = ()
    dist: tuple[str, float, float] | None = None


@dataclass(frozen=True)
class CapacitySpec:
    key: str
    lo: float
    hi: float
    tolerance: float
    slo: dict[str, float]
    run_points: bool = False


@dataclass(frozen=True)
class Point:
    """A resolved point: its id (hash of what it simulates), its folder name (from its axis values), the
    overrides that made it, and the scenario it simulates."""

    id: str
    overrides: dict[str, Any]
    scenario: Scenario
    kind: str = "grid"
    name: str = ""


@dataclass
class Sweep:
    name: str
    mode: str
    out: Path
    base: dict[str, Any]
    base_dir: str
    axes: list[Axis]
    samples: int
    seed: int
    capacity: CapacitySpec | None
    source: Path
    _file_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def points_dir(self) -> Path:
        return self.out / "points"


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise LapsbenchError(f"{path}: no such {what} file")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise LapsbenchError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LapsbenchError(f"{path}: cannot read {what}: {exc}") from None


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
    data = _read_toml(path, "sweep")
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
        base = _read_toml(base_path, "base scenario")
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


# ------------------------------------------------------------------------------------------- points

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
    from lapsbench.workload import profile_path, trace_sha256, with_absolute_paths

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


# ------------------------------------------------------------------------------------------- one point

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


def run_point(task: Task) -> Outcome:
    """Simulate one point and write its results directory atomically (a failure writes error.txt instead).
    Top-level and argument-only, so it runs the same in-process, in a spawned worker, or in a Ray task."""
    from lapsbench.report import write_results
    from lapsbench.runner import run_scenario

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


# ------------------------------------------------------------------------------------------- backends

# events(kind, task_id, outcome): kind is "start" or "finish"
Events = Callable[[str, str, Outcome | None], None]


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops the workers


class LocalBackend:
    """A spawn-context process pool (fork is unsafe with polars' threads); one worker runs in-process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Any = None

    def run(self, tasks: list[Task], events: Events) -> list[Outcome]:
        if self.workers == 1:
            outcomes = []
            for t in tasks:
                events("start", t.id, None)
                outcomes.append(run_point(t))
                events("finish", t.id, outcomes[-1])
            return outcomes
        import concurrent.futures as cf
        import multiprocessing
        from concurrent.futures.process import BrokenProcessPool

        def start_pool() -> None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_ignore_sigint)

        if self._pool is None:
            start_pool()
        pending = iter(tasks)
        running: dict[Any, str] = {}
        outcomes: dict[str, Outcome] = {}

        def submit() -> None:
            for t in itertools.islice(pending, self.workers - len(running)):
                try:
                    fut = self._pool.submit(run_point, t)
                except BrokenProcessPool:  # a worker died (e.g. out of memory): its points failed; go on
                    self._pool.shutdown(wait=True, cancel_futures=True)
                    start_pool()
                    fut = self._pool.submit(run_point, t)
                running[fut] = t.id
                events("start", t.id, None)

        submit()
        while running:
            # a timeout keeps Ctrl-C responsive: a lock wait without one is not interrupted by SIGINT
            done, _ = cf.wait(running, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                tid = running.pop(fut)
                try:
                    outcome = fut.result()
                except Exception as exc:  # the worker process died (e.g. killed for memory)
                    outcome = Outcome(tid, False, error=f"worker died: {type(exc).__name__}: {exc}")
                outcomes[tid] = outcome
                events("finish", tid, outcome)
            submit()
        return [outcomes[t.id] for t in tasks]

    def close(self) -> None:
        if self._pool is not None:
            for proc in list(getattr(self._pool, "_processes", {}).values()):  # stop in-flight points now
                proc.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _check_reachable(address: str) -> None:
    """Fail fast (exit 2) on an address nothing listens on, instead of Ray's long connection retries."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise LapsbenchError(f"--address: {address!r} — expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise LapsbenchError(f"--address: cannot reach a Ray cluster at {address} ({exc})") from None


class RayBackend:
    """Ray tasks (one CPU each). Without --address a local Ray instance with `workers` CPUs is started;
    the worktree's lapsbench is put on the workers' PYTHONPATH so an uninstalled checkout works too."""

    def __init__(self, workers: int, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise LapsbenchError("--backend ray: Ray is not installed; install it with "
                                 "pip install 'lapsbench[ray]'") from None
        import logging

        self.ray = ray
        pkg_parent = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH", "")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
                                      "log_to_driver": False, "runtime_env": runtime_env}
            if address:
                _check_reachable(address)
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers
            try:
                ray.init(**kwargs)
            except Exception as exc:
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise LapsbenchError(f"--address: cannot join the Ray cluster at {address or 'local'} "
                                     f"({line})") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = max(1, cpus if address else workers)
        self._remote = ray.remote(num_cpus=1, max_retries=0)(run_point)

    def run(self, tasks: list[Task], events: Events) -> list[Outcome]:
        ray = self.ray
        pending = iter(tasks)
        running: dict[Any, str] = {}
        outcomes: dict[str, Outcome] = {}

        def submit() -> None:
            for t in itertools.islice(pending, self.slots - len(running)):
                running[self._remote.remote(t)] = t.id
                events("start", t.id, None)

        submit()
        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
            for ref in done:
                tid = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task's worker died
                    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    outcome = Outcome(tid, False, error=f"ray task failed: {line}")
                outcomes[tid] = outcome
                events("finish", tid, outcome)
            submit()
        return [outcomes[t.id] for t in tasks]

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


# ------------------------------------------------------------------------------------------- progress

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


def _execute(sweep: Sweep, points: list[Point], backend: Any, tally: Tally) -> dict[str, Outcome]:
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


# ------------------------------------------------------------------------------------------- capacity

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
        outcomes = _execute(sweep, unique, backend, tally)
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
        row: dict[str, Any] = {_column(k): _cell(v) for k, v in s.context.items()}
        found = s.status in ("ok", "at-least-hi")
        row.update({"scheduler": s.scheduler, "key": cap.key, "capacity": s.lo if found else None,
                    "upper": s.hi if s.status == "ok" else None, "status": s.status, "probes": s.probes})
        for m in cap.slo:
            row[f"{m}_at_capacity"] = s.lo_metrics.get(m)
        row["error"] = s.error
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


# ------------------------------------------------------------------------------------------- merge

def _column(key: str) -> str:
    """Override column name: the key path; top-level keys get `scenario.` so they never clash with results."""
    return key if "." in key else f"scenario.{key}"


def _cell(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def _override_columns(points: list[Point]) -> dict[str, pl.DataType]:
    """One dtype per override key over all points (ints widen to floats, anything else to JSON strings)."""
    kinds: dict[str, set[type]] = {}
    for p in points:
        for k, v in p.overrides.items():
            kinds.setdefault(k, set()).add(type(_cell(v)))
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
        v = None if v is None else (_cell(v) if not isinstance(dtype, pl.String) else
                                    (v if isinstance(v, str) else json.dumps(v, sort_keys=True)))
        exprs.append(pl.lit(v, dtype=dtype).alias(_column(k)))
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


# ------------------------------------------------------------------------------------------- driver

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


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One sweep process per directory: stale temporaries may then be removed safely."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - no flock on Windows; run one sweep per directory there
            pass
        except OSError:
            raise LapsbenchError(f"{out}: another lapsbench sweep is writing this directory") from None
        yield


def _claim(sweep: Sweep) -> None:
    """Record the definition in OUT/sweep.json, or refuse a directory written by a different definition."""
    digest = definition_hash(sweep)
    marker = sweep.out / "sweep.json"
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise LapsbenchError(f"{marker}: unreadable; expected a lapsbench sweep record") from None
        if old.get("definition_sha256") != digest:
            raise LapsbenchError(f"{sweep.out}: written by a different sweep definition ({old.get('name')!r}, "
                                 f"{str(old.get('definition_sha256'))[:12]}); use another [sweep] out or --out")
        return
    record = {"name": sweep.name, "definition_sha256": digest, "source": str(sweep.source),
              "lapsbench_version": __version__,
              "axes": [{"key": a.key, "values": list(a.values), "dist": a.dist} for a in sweep.axes],
              "mode": sweep.mode, "capacity": dataclasses.asdict(sweep.capacity) if sweep.capacity else None}
    with atomic_file(marker) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")


def _clean_stale(points_dir: Path) -> None:
    """Temporaries left by a killed run (atomic_dir names them `.<id>.*.tmp`)."""
    if points_dir.is_dir():
        for stale in list(points_dir.glob(".*.tmp")):  # listed first: deleting while scanning skips entries
            shutil.rmtree(stale, ignore_errors=True)


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


def run_sweep(sweep: Sweep, backend: str = "local", workers: int | None = None, address: str | None = None,
              bar: Any = None, plots: bool = False) -> SweepResult:
    """Run (or resume) a sweep: grid points, then the capacity search; merge whatever finished; with
    `plots`, draw each main metric against each numeric axis into OUT/plots/."""
    start = time.perf_counter()
    points = grid_points(sweep)
    workers = workers if workers is not None else (os.cpu_count() or 1)
    with _locked(sweep.out):
        _claim(sweep)
        _clean_stale(sweep.points_dir)
        engine = LazyBackend(backend, workers, address)
        tally = Tally(bar)
        capacity = None
        try:
            run_grid = sweep.capacity is None or sweep.capacity.run_points
            if run_grid:
                _execute(sweep, points, engine, tally)
            all_points = list(points) if run_grid else []
            if sweep.capacity is not None:
                capacity = capacity_search(sweep, engine, tally, all_points)
                with atomic_file(sweep.out / "capacity.csv") as tmp:
                    capacity.write_csv(tmp)
        finally:
            engine.close()
        unique = unique_points(all_points)
        summary = merge(sweep, unique)
        axes = [_column(a.key) for a in sweep.axes]
        if plots:
            from lapsbench.plots import write_sweep_plots

            with atomic_dir(sweep.out / "plots") as tmp:
                write_sweep_plots(summary.filter(pl.col("kind") == "grid") if summary.height else summary, axes,
                                  sweep.mode, tmp, sweep.name, MAIN_METRICS)
    names = {p.id: p.name for p in unique}
    errors = {names.get(pid, pid): err for pid, err in tally.errors.items()}
    return SweepResult(sweep.out, len(unique), tally.done, tally.cached, tally.failed, errors, summary,
                       capacity, time.perf_counter() - start, axes)


# ------------------------------------------------------------------------------------------- CLI glue

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


# (summary column, header, scale, digits): the main metrics of the sweep table and plots
MAIN_METRICS = (("jct_mean_s", "JCT mean s", 1.0, 3), ("jct_p99_s", "JCT p99 s", 1.0, 3),
                ("ttft_mean_s", "TTFT mean s", 1.0, 3), ("ttft_p99_s", "TTFT p99 s", 1.0, 3),
                ("tpot_mean_s", "TPOT mean ms", 1000.0, 2), ("throughput_rps", "req/s", 1.0, 2))
TABLE_ROWS = 200   # more rows than this are left to summary.csv


def _shown(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def sweep_table(result: SweepResult) -> Any:
    """One row per grid point and scheduler: the axes' values, then the main metrics; the lowest mean
    JCT of each point in bold."""
    from rich.table import Table

    rows = result.summary.filter(pl.col("kind") == "grid") if result.summary.height else result.summary
    table = Table(title=f"{rows['point'].n_unique() if rows.height else 0} points × schedulers "
                        f"(all columns: {result.out}/summary.csv)", header_style="bold")
    for col in result.axes:
        table.add_column(col, justify="right" if rows.schema[col].is_numeric() else "left", no_wrap=True)
    table.add_column("scheduler", no_wrap=True)
    for _, header, _, _ in MAIN_METRICS:
        table.add_column(header, justify="right", no_wrap=True)
    best = dict(rows.group_by("point").agg(pl.col("jct_mean_s").min()).iter_rows()) if rows.height else {}
    for row in rows.head(TABLE_ROWS).iter_rows(named=True):
        cells = [_shown(row[c]) for c in result.axes] + [row["scheduler"]]
        for col, _, scale, digits in MAIN_METRICS:
            v = row.get(col)
            text = "–" if v is None or not math.isfinite(v) else f"{v * scale:.{digits}f}"
            cells.append(f"[bold]{text}[/]" if col == "jct_mean_s" and v == best.get(row["point"]) else text)
        table.add_row(*cells)
    if rows.height > TABLE_ROWS:
        table.caption = f"first {TABLE_ROWS} of {rows.height} rows"
    return table


def print_sweep(result: SweepResult) -> None:
    """The results table (one row per point and scheduler), a line of counts, failed points with their
    error, and the capacity table when searched."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or captured: keep rows on one line
        console = Console(width=200)
    if result.summary.height and (result.summary["kind"] == "grid").any():
        console.print(sweep_table(result))
    console.print(f"{result.points} points: {result.done} done ({result.cached} cached), {result.failed} failed "
                  f"— results in {result.out}/ ({result.wall_s:.1f} s)", soft_wrap=True)
    for name, err in result.errors.items():
        console.print(f"[red]failed[/] {name}: {err} (see {result.out}/points/{name}/error.txt)", soft_wrap=True)
    if result.capacity is not None and result.capacity.height:
        shown = result.capacity.drop("error", "key")
        key = result.capacity["key"][0]
        table = Table(title=f"capacity: highest {key} meeting the SLO", header_style="bold")
        for col in shown.columns:
            table.add_column(col, justify="right" if shown[col].dtype.is_numeric() else "left")
        for row in shown.iter_rows():
            table.add_row(*("–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
        console.print(table)
