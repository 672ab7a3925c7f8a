"""What a sweep is: its axes, the capacity search, its points (parsed in parse.py, resolved in points.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lapsbench.config.scenario import Scenario

MODES = ("grid", "zip", "random")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
SWEEP_KEYS = ("name", "mode", "out", "samples", "seed")
CAPACITY_KEYS = ("key", "lo", "hi", "tolerance", "slo", "run_points")


# Latency metrics of the summary an SLO may bound (metric <= limit).
SLO_METRICS = tuple(f"{m}_{s}_s" for m in ("jct", "ttft", "tpot") for s in ("mean", "p50", "p90", "p99"))


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
