"""`lapsbench compare` on a scenario: every scheduler on identical requests and randomness, optionally over
a load sweep (--rates), simulated here and handed to the results side as one records frame; see
lapsbench/results/comparison.py for the tables and docs/compare.md for the load syntax."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from lapsbench.config.scenario import Scenario, SchedulerSpec, scenario_to_toml
from lapsbench.errors import LapsbenchError
from lapsbench.results.comparison import Comparison, build_comparison, resolve_baseline
from lapsbench.results.stats import BOOTSTRAP_RESAMPLES, offered_rate

if TYPE_CHECKING:
    from lapsbench.run.runner import RunResult

RATE_SUFFIX = "rps"

# progress(label, replication, finished, total) as in the runner, plus the load point in front.
Progress = Callable[[str, int, int, int], None]


@dataclass(frozen=True)
class LoadSpec:
    """One item of --rates: a multiple of the trace's native rate, or an absolute rate in requests/s."""

    value: float
    absolute: bool

    def rate_scale(self, native_rps: float) -> float:
        return self.value / native_rps if self.absolute else self.value


def parse_rates(text: str) -> list[LoadSpec]:
    """`0.5,1,1.5` (multiples of the trace's native rate) or `2rps,4rps` (absolute requests/s); the two
    may be mixed. Empty, non-positive, non-finite or repeated items are bad input."""
    items = [t.strip() for t in text.split(",")]
    if not any(items):
        raise LapsbenchError(f"--rates: {text!r} is an empty sweep — expected e.g. 0.5,1,1.5 or 2rps,4rps")
    specs = []
    for item in items:
        if not item:
            raise LapsbenchError(f"--rates: {text!r} has an empty item — expected e.g. 0.5,1,1.5 or 2rps,4rps")
        absolute = item.lower().endswith(RATE_SUFFIX)
        number = item[: -len(RATE_SUFFIX)] if absolute else item
        try:
            value = float(number)
        except ValueError:
            raise LapsbenchError(f"--rates: {item!r} — expected a number (multiple of the trace's rate) "
                                 f"or a number followed by rps (requests/s)") from None
        if not (math.isfinite(value) and value > 0):
            raise LapsbenchError(f"--rates: {item!r} — expected a rate > 0")
        specs.append(LoadSpec(value, absolute))
    if len(set(specs)) != len(specs):
        raise LapsbenchError(f"--rates: {text!r} repeats a rate — expected distinct rates")
    return specs


def native_rate(s: Scenario) -> float:
    """Mean arrival rate (requests/s) of the scenario's trace window at rate_scale 1."""
    from lapsbench.run.assembly import load_workload

    w = load_workload(dataclasses.replace(s, trace=dataclasses.replace(s.trace, rate_scale=1.0)))
    rate = offered_rate(w.arrival_s)
    if not math.isfinite(rate):
        where = "trace.synth" if s.trace.synth else f"trace.path: {s.trace.path}"
        raise LapsbenchError(f"{where} — the window has fewer than two distinct arrival "
                             f"times, so an absolute rate in rps cannot be converted to a rate_scale")
    return rate


def select_schedulers(s: Scenario, wanted: Sequence[str] | None) -> Scenario:
    """The schedulers named in --schedulers, in the order given: a label of the scenario keeps its TOML
    parameters; a policy name of the scenario selects every label of that policy; any other registered
    scheduler name is added with its default parameters."""
    from lapsbench.schedulers import registry

    if not wanted:
        return s
    chosen: list[SchedulerSpec] = []
    for w in wanted:
        match = [spec for spec in s.scheduler if spec.label == w] or [spec for spec in s.scheduler if spec.name == w]
        if not match and w in registry():
            match = [SchedulerSpec(name=w, label=w, params={})]
        if not match:
            labels = ", ".join(spec.label for spec in s.scheduler)
            raise LapsbenchError(f"--schedulers: {w!r} is neither a scheduler of the scenario ({labels}) nor a "
                                 f"registered one — expected one of: {', '.join(sorted(registry()))}")
        chosen += [m for m in match if m not in chosen]
    return dataclasses.replace(s, scheduler=tuple(chosen))


def run_comparison(s: Scenario, loads: Sequence[LoadSpec] | None, baseline: str | None,
                   progress: Callable[[float], Progress | None] | None = None,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> Comparison:
    """Simulate every scheduler × replication at every load point (the scenario's own rate_scale when
    `loads` is None) and build the paired comparison."""
    from lapsbench.run.assembly import trace_identity, with_absolute_paths
    from lapsbench.run.runner import run_scenario

    labels = [spec.label for spec in s.scheduler]
    base = resolve_baseline(labels, baseline)
    if loads is None:
        scales = [s.trace.rate_scale]
    else:
        native = native_rate(s) if any(x.absolute for x in loads) else math.nan
        scales = [x.rate_scale(native) for x in loads]
        if len(set(scales)) != len(scales):
            raise LapsbenchError("--rates: two items give the same rate_scale — expected distinct load points")
    frames, stats, wall, workload, derived = [], [], 0.0, None, {}
    for scale in scales:
        point = dataclasses.replace(s, trace=dataclasses.replace(s.trace, rate_scale=scale))
        result = run_scenario(point, progress(scale) if progress else None)
        wall += result.wall_s
        workload = result.workload
        derived = derived or result.derived or {}  # rate-independent: the first point's
        frames.append(result.requests.with_columns(pl.lit(scale, pl.Float64).alias("rate_scale")))
        if result.engine_stats is not None:
            stats.append(result.engine_stats.with_columns(pl.lit(scale, pl.Float64).alias("rate_scale")))
    assert workload is not None
    requests = pl.concat(frames, how="vertical")
    meta = {**trace_identity(s), "wall_s": round(wall, 3), "derived": derived, "load_unit": load_unit(loads)}
    return build_comparison(requests, name=s.name, seed=s.seed, slo=s.slo, baseline=base, meta=meta,
                            scenario_toml=scenario_to_toml(with_absolute_paths(s)), resamples=resamples,
                            engine_stats=pl.concat(stats) if stats else None)


def load_unit(loads: Sequence[LoadSpec] | None) -> str:
    """How the load points were given, for labels: `rps` (all absolute), `scale` (all multiples of the
    trace's rate, or the scenario's own rate_scale) or `mixed`."""
    kinds = {x.absolute for x in loads or ()}
    return "rps" if kinds == {True} else "mixed" if len(kinds) == 2 else "scale"


def comparison_of_run(s: Scenario, result: RunResult) -> Comparison:
    """The comparison of one `run` (its own rate_scale, the default baseline), for `run --plots`."""
    requests = result.requests.with_columns(pl.lit(s.trace.rate_scale, pl.Float64).alias("rate_scale"))
    stats = result.engine_stats
    if stats is not None:
        stats = stats.with_columns(pl.lit(s.trace.rate_scale, pl.Float64).alias("rate_scale"))
    labels = [spec.label for spec in s.scheduler]
    return build_comparison(requests, name=s.name, seed=s.seed, slo=s.slo, baseline=resolve_baseline(labels, None),
                            meta={"load_unit": "scale"}, engine_stats=stats)
