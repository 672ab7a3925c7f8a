"""`lapsbench compare`: every scheduler on identical requests and randomness, paired against a baseline,
optionally over a load sweep; or the same tables rebuilt from saved results directories.

Everything here is a pure function of the per-request records frame (plus the scenario's seed and SLO),
so a comparison rebuilt from `requests.parquet` gives the same numbers as the one that simulated. See
docs/compare.md for the confidence intervals, the load syntax and the saturation rule."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from lapsbench import __version__
from lapsbench.errors import LapsbenchError
from lapsbench.metrics import summarize, summarize_replications
from lapsbench.scenario import Scenario, SchedulerSpec, SloSpec, load_scenario, scenario_to_toml
from lapsbench.stats import (
    BOOTSTRAP_RESAMPLES,
    offered_rate,
    paired_bootstrap_ratio,
    paired_t_ratio,
    ssjf_throughput,
)

if TYPE_CHECKING:
    from lapsbench.runner import RunResult

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# A load point is saturated when its sustained throughput (requests / makespan) falls below this
# fraction of the offered rate: the server fell behind the arrivals and the run ends draining a backlog
# that grew with the run (docs/compare.md).
SATURATION_THRESHOLD = 0.95
CHANGED = ("jct", "ttft", "tpot")   # metrics whose mean gets a paired change against the baseline
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


@dataclass
class Comparison:
    """Everything `compare` writes: the records (with `rate_scale`), the per-replication summaries and
    the per (load point, scheduler) table with changes against the baseline."""

    requests: pl.DataFrame
    per_replication: pl.DataFrame
    summary: pl.DataFrame
    baseline: str
    ci_method: str
    name: str
    seed: int
    slo: SloSpec
    meta: dict[str, Any] = field(default_factory=dict)
    scenario_toml: str = ""
    engine_stats: pl.DataFrame | None = None  # per (rate_scale, scheduler, replication): batch size, KV use

    @property
    def rate_scales(self) -> list[float]:
        return sorted(set(self.summary["rate_scale"].to_list()))

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(self.summary["scheduler"].to_list()))


# ---------------------------------------------------------------------------------------------- input

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
    from lapsbench.workload import load_workload

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


def resolve_baseline(labels: Sequence[str], baseline: str | None) -> str:
    """The baseline label: as given (it must be a scheduler of the comparison), else `fcfs` when present,
    else the first scheduler."""
    if baseline is None:
        return "fcfs" if "fcfs" in labels else labels[0]
    if baseline not in labels:
        raise LapsbenchError(f"--baseline: {baseline!r} is not among the schedulers — expected one of: "
                             f"{', '.join(labels)}")
    return baseline


def run_comparison(s: Scenario, loads: Sequence[LoadSpec] | None, baseline: str | None,
                   progress: Callable[[float], Progress | None] | None = None,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> Comparison:
    """Simulate every scheduler × replication at every load point (the scenario's own rate_scale when
    `loads` is None) and build the paired comparison."""
    from lapsbench.runner import run_scenario
    from lapsbench.workload import trace_identity, with_absolute_paths

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


def load_results(dirs: Sequence[Path], baseline: str | None, schedulers: Sequence[str] | None = None,
                 resamples: int = BOOTSTRAP_RESAMPLES) -> Comparison:
    """Rebuild a comparison from saved `run` or `compare` results directories, without simulating.

    Refused (one line, exit 2): a directory without requests.parquet / meta.json / scenario.toml,
    directories from different traces or lapsbench versions, or whose scenarios differ in anything that
    breaks the pairing (seed, replications, trace window, model, speculation, engine, SLO), and the same
    scheduler at the same load in two directories."""
    if not dirs:
        raise LapsbenchError("compare: expected a scenario TOML or one or more results directories")
    loaded = [_read_dir(d) for d in dirs]
    first_dir, first_meta, first_raw, _ = loaded[0]
    for d, meta, raw, _ in loaded[1:]:
        for key, what in (("trace_sha256", "traces"), ("lapsbench_version", "lapsbench versions")):
            if meta.get(key) != first_meta.get(key):
                raise LapsbenchError(f"{d}: meta.json {key} {meta.get(key)!r} differs from {first_dir}'s "
                                     f"{first_meta.get(key)!r} — results from different {what} cannot be compared")
        for key in _pairing_keys(raw):
            if _pairing_value(raw, key) != _pairing_value(first_raw, key):
                raise LapsbenchError(f"{d}: scenario.toml {key} differs from {first_dir}'s — runs are paired only "
                                     f"when seed, replications, trace window, model, speculation, engine and slo agree")
    frames = []
    seen: dict[tuple[float, str], Path] = {}
    for d, _meta, raw, requests in loaded:
        if "rate_scale" not in requests.columns:
            scale = float(raw.get("trace", {}).get("rate_scale", 1.0))
            requests = requests.with_columns(pl.lit(scale, pl.Float64).alias("rate_scale"))
        for scale, label in requests.select("rate_scale", "scheduler").unique(maintain_order=True).iter_rows():
            if (scale, label) in seen:
                raise LapsbenchError(f"{d}: scheduler {label!r} at rate_scale {scale:g} is also in {seen[scale, label]}"
                                     f" — expected each scheduler once per load")
            seen[scale, label] = d
        frames.append(requests)
    requests = pl.concat(frames, how="diagonal_relaxed")
    if schedulers:
        missing = [w for w in schedulers if w not in set(requests["scheduler"].to_list())]
        if missing:
            raise LapsbenchError(f"--schedulers: {missing[0]!r} is not in the results — expected one of: "
                                 f"{', '.join(dict.fromkeys(requests['scheduler'].to_list()))}")
        requests = requests.filter(pl.col("scheduler").is_in(list(schedulers)))
    scenario = load_scenario(first_dir / "scenario.toml")
    labels = list(dict.fromkeys(requests["scheduler"].to_list()))
    saved = first_meta.get("baseline")   # a rebuilt compare keeps its baseline unless told otherwise
    base = resolve_baseline(labels, baseline if baseline is not None or saved not in labels else saved)
    meta = {"trace_path": first_meta.get("trace_path"), "trace_sha256": first_meta.get("trace_sha256"),
            "wall_s": 0.0, "sources": [str(d) for d in dirs],
            "load_unit": first_meta.get("load_unit", "scale") if len(dirs) == 1 else "scale"}
    if first_meta.get("lapsbench_version") != __version__:
        meta["source_lapsbench_version"] = first_meta.get("lapsbench_version")
    stats = [x for x in (_read_engine_stats(d, raw) for d, _m, raw, _r in loaded) if x is not None]
    engine_stats = pl.concat(stats, how="diagonal_relaxed") if len(stats) == len(loaded) else None
    return build_comparison(requests, name=scenario.name, seed=scenario.seed, slo=scenario.slo, baseline=base,
                            meta=meta, scenario_toml=(first_dir / "scenario.toml").read_text(), resamples=resamples,
                            engine_stats=engine_stats)


def _read_engine_stats(d: Path, raw: dict[str, Any]) -> pl.DataFrame | None:
    """engine_stats.parquet of a results directory (absent in results from before it existed)."""
    path = d / "engine_stats.parquet"
    if not path.is_file():
        return None
    stats = pl.read_parquet(path)
    if "rate_scale" not in stats.columns:
        stats = stats.with_columns(pl.lit(float(raw.get("trace", {}).get("rate_scale", 1.0)), pl.Float64)
                                   .alias("rate_scale"))
    return stats


def _read_dir(d: Path) -> tuple[Path, dict[str, Any], dict[str, Any], pl.DataFrame]:
    if not d.is_dir():
        raise LapsbenchError(f"{d}: not a directory — expected a scenario .toml or results directories")
    for name in ("requests.parquet", "meta.json", "scenario.toml"):
        if not (d / name).is_file():
            raise LapsbenchError(f"{d}: no {name} — expected a results directory written by lapsbench run or compare")
    try:
        meta = json.loads((d / "meta.json").read_text())
        raw = tomllib.loads((d / "scenario.toml").read_text())
        requests = pl.read_parquet(d / "requests.parquet")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, OSError, pl.exceptions.PolarsError) as exc:
        raise LapsbenchError(f"{d}: unreadable results: {str(exc).splitlines()[0]}") from None
    needed = {"scheduler", "replication", "request_id", "arrival_s", "finish_s", "jct_s", "ttft_s", "tpot_s",
              "output_tokens"}
    if not isinstance(meta, dict) or not needed <= set(requests.columns):
        raise LapsbenchError(f"{d}: requests.parquet lacks {sorted(needed - set(requests.columns))} — expected "
                             f"the per-request records of lapsbench run")
    return d, meta, raw, requests


def _pairing_keys(raw: dict[str, Any]) -> list[str]:
    keys = ["seed", "replications"]
    # path and synth: the trace hash decides (a synth table names its csv: files by absolute path, by content in
    # the hash)
    keys += [f"trace.{k}" for k in raw.get("trace", {}) if k not in ("rate_scale", "path", "synth")]
    keys += [t for t in ("model", "speculation", "engine", "slo")]
    return keys


def _pairing_value(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


# ------------------------------------------------------------------------------------------ summaries

def _point_seed(seed: int, rate_scale: float) -> list[int]:
    """Bootstrap entropy of one load point: the scenario seed and the rate's bits, so a rebuilt point
    resamples exactly as the original whatever other points share the comparison."""
    bits = struct.unpack("<Q", struct.pack("<d", rate_scale))[0]
    return [seed, bits >> 32, bits & 0xFFFFFFFF]


def _matrix(part: pl.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray]:
    """(requests × replications) values of `col`, rows in request-id order, and those ids."""
    part = part.sort(["replication", "request_id"])
    reps = part["replication"].n_unique()
    ids = part["request_id"].to_numpy()
    n = ids.size // reps
    values = part[col].cast(pl.Float64).fill_null(np.nan).to_numpy().reshape(reps, n).T
    return values, ids


def build_comparison(requests: pl.DataFrame, *, name: str, seed: int, slo: SloSpec, baseline: str,
                     meta: dict[str, Any] | None = None, scenario_toml: str = "",
                     resamples: int = BOOTSTRAP_RESAMPLES, engine_stats: pl.DataFrame | None = None) -> Comparison:
    """Summaries per (load point, scheduler), the papers' named metrics, saturation, and the paired change
    of mean JCT / TTFT / TPOT against `baseline` with 95% CIs (t over replications when there are at
    least two, else the paired bootstrap over requests; both are kept in the table)."""
    labels = list(dict.fromkeys(requests["scheduler"].to_list()))
    if baseline not in labels:
        raise LapsbenchError(f"--baseline: {baseline!r} is not among the schedulers — expected one of: "
                             f"{', '.join(labels)}")
    summaries, per_reps = [], []
    methods = set()
    for scale in sorted(set(requests["rate_scale"].to_list())):
        point = requests.filter(pl.col("rate_scale") == scale)
        if baseline not in set(point["scheduler"].to_list()):
            raise LapsbenchError(f"--baseline: {baseline!r} has no results at rate_scale {scale:g} — expected "
                                 f"the baseline at every load point")
        point_stats = None  # batch size / KV utilisation, when simulated here (not kept in results dirs)
        if engine_stats is not None:
            point_stats = engine_stats.filter(pl.col("rate_scale") == scale).drop("rate_scale")
        per_rep = summarize_replications(point.drop("rate_scale"), slo, point_stats)
        per_rep = per_rep.join(_named_metrics(point), on=["scheduler", "replication"], how="left",
                               maintain_order="left")
        summary = summarize(per_rep)
        summary = summary.join(_policies(point), on="scheduler", how="left", maintain_order="left")
        change, method = _changes(point, baseline, _point_seed(seed, scale), resamples)
        methods.add(method)
        summary = summary.join(change, on="scheduler", how="left", maintain_order="left")
        summary = summary.with_columns(
            pl.lit(scale, pl.Float64).alias("rate_scale"),
            (pl.col("throughput_rps") / pl.col("offered_rps")).alias("throughput_ratio"),
        ).with_columns(
            (pl.col("throughput_ratio") < SATURATION_THRESHOLD).alias("saturated"),
        )
        summaries.append(_order(summary))
        per_reps.append(per_rep.with_columns(pl.lit(scale, pl.Float64).alias("rate_scale"))
                        .select("rate_scale", pl.exclude("rate_scale")))
    ci_method = " / ".join(sorted(methods))
    return Comparison(requests=requests, per_replication=pl.concat(per_reps, how="diagonal_relaxed"),
                      summary=pl.concat(summaries, how="diagonal_relaxed"), baseline=baseline, ci_method=ci_method,
                      name=name, seed=seed, slo=slo, meta=dict(meta or {}), scenario_toml=scenario_toml,
                      engine_stats=engine_stats)


def _named_metrics(point: pl.DataFrame) -> pl.DataFrame:
    """Per (scheduler, replication): SSJF's first-quarter throughput and the offered rate (which, with
    the sustained throughput, decides saturation)."""
    rows = []
    for (label, rep), part in point.group_by(["scheduler", "replication"], maintain_order=True):
        arrival, finish = part["arrival_s"].to_numpy(), part["finish_s"].to_numpy()
        rows.append({"scheduler": label, "replication": rep, "offered_rps": offered_rate(arrival),
                     "ssjf_throughput_rps": ssjf_throughput(finish)})
    return pl.DataFrame(rows, schema={"scheduler": pl.String, "replication": point["replication"].dtype,
                                      "offered_rps": pl.Float64, "ssjf_throughput_rps": pl.Float64})


def _policies(point: pl.DataFrame) -> pl.DataFrame:
    if "policy" not in point.columns:
        return point.select("scheduler").unique(maintain_order=True).with_columns(pl.col("scheduler").alias("policy"))
    return point.select("scheduler", "policy").unique(subset="scheduler", maintain_order=True)


def _changes(point: pl.DataFrame, baseline: str, seed: list[int], resamples: int) -> tuple[pl.DataFrame, str]:
    """Paired relative change of each mean in CHANGED against the baseline, per scheduler."""
    base_part = point.filter(pl.col("scheduler") == baseline)
    reps = base_part["replication"].n_unique()
    method = "t over replications" if reps >= 2 else "paired bootstrap over requests"
    rows = []
    base_ids = None
    for label in point["scheduler"].unique(maintain_order=True):
        part = point.filter(pl.col("scheduler") == label)
        row: dict[str, Any] = {"scheduler": label}
        for m in CHANGED:
            x, ids = _matrix(part, f"{m}_s")
            b, base_ids = _matrix(base_part, f"{m}_s")
            if x.shape != b.shape or not np.array_equal(ids, base_ids):
                raise LapsbenchError(f"scheduler {label!r} at rate_scale {point['rate_scale'][0]:g}: its requests or "
                                     f"replications differ from the baseline {baseline!r}'s — expected the same "
                                     f"requests under every scheduler (same trace window, seed and replications)")
            t = paired_t_ratio(x, b)
            boot = paired_bootstrap_ratio(x, b, seed, resamples)
            reported = t if reps >= 2 else boot
            row |= {f"{m}_mean_change": reported.estimate, f"{m}_mean_change_lo": reported.lo,
                    f"{m}_mean_change_hi": reported.hi, f"{m}_mean_change_t_lo": t.lo,
                    f"{m}_mean_change_t_hi": t.hi, f"{m}_mean_change_boot_lo": boot.lo,
                    f"{m}_mean_change_boot_hi": boot.hi}
        rows.append(row)
    return pl.DataFrame(rows), method


_FIRST = ["rate_scale", "offered_rps", "scheduler", "policy", "replications", "requests", "requests_total"]


def _order(summary: pl.DataFrame) -> pl.DataFrame:
    first = [c for c in _FIRST if c in summary.columns]
    return summary.select(first + [c for c in summary.columns if c not in first])


# ------------------------------------------------------------------------------------------------ output

def write_comparison(out_dir: Path, comp: Comparison, command: str, plots: bool = True) -> None:
    """Write every file into a temporary directory that replaces `out_dir` only when complete."""
    from lapsbench.fsutil import atomic_dir
    from lapsbench.report import environment
    from lapsbench.report_compare import comparison_markdown

    meta = {
        "lapsbench_version": __version__,
        "kind": "compare",
        "scenario": comp.name,
        "seed": comp.seed,
        "replications": int(comp.requests["replication"].n_unique()),
        "schedulers": comp.labels,
        "baseline": comp.baseline,
        "rate_scales": comp.rate_scales,
        "ci_method": comp.ci_method,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "saturation_threshold": SATURATION_THRESHOLD,
        "requests": int(comp.requests.filter(
            (pl.col("scheduler") == comp.baseline) & (pl.col("replication") == 0)).height),
        **comp.meta,
        "command": command,
        **environment(),
    }
    with atomic_dir(out_dir) as tmp:
        comp.requests.write_parquet(tmp / "requests.parquet", compression="zstd")
        if comp.engine_stats is not None:
            comp.engine_stats.write_parquet(tmp / "engine_stats.parquet")
        comp.summary.write_csv(tmp / "summary.csv")
        comp.per_replication.write_csv(tmp / "summary_by_replication.csv")
        payload = {
            "baseline": comp.baseline,
            "ci_method": comp.ci_method,
            "schedulers": [{k: _json_safe(v) for k, v in row.items()} for row in comp.summary.to_dicts()],
            "by_replication": [{k: _json_safe(v) for k, v in row.items()} for row in comp.per_replication.to_dicts()],
        }
        (tmp / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
        (tmp / "comparison.md").write_text(comparison_markdown(comp))
        (tmp / "scenario.toml").write_text(comp.scenario_toml)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if plots:
            from lapsbench.plots import write_plots

            write_plots(comp, tmp / "plots")


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
