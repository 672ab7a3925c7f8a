"""A comparison's tables: every scheduler paired against a baseline per load point, from the per-request
records frame (plus the scenario's seed and SLO) alone, so a comparison rebuilt from saved results
directories gives the same numbers as the one that simulated. See docs/compare.md for the confidence
intervals and the saturation rule. Rendering (render_compare.py, plots.py) and writing (writer.py) read a
`Comparison`; nothing here imports them."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench import __version__
from lapsbench.config.scenario import SloSpec, load_scenario
from lapsbench.errors import LapsbenchError
from lapsbench.results.metrics import summarize, summarize_replications
from lapsbench.results.records import read_engine_stats, read_results_dir
from lapsbench.results.stats import (
    BOOTSTRAP_RESAMPLES,
    offered_rate,
    paired_bootstrap_ratio,
    paired_t_ratio,
    ssjf_throughput,
)

# A load point is saturated when its sustained throughput (requests / makespan) falls below this
# fraction of the offered rate: the server fell behind the arrivals and the run ends draining a backlog
# that grew with the run (docs/compare.md).
SATURATION_THRESHOLD = 0.95
CHANGED = ("jct", "ttft", "tpot")   # metrics whose mean gets a paired change against the baseline


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


def resolve_baseline(labels: Sequence[str], baseline: str | None) -> str:
    """The baseline label: as given (it must be a scheduler of the comparison), else `fcfs` when present,
    else the first scheduler."""
    if baseline is None:
        return "fcfs" if "fcfs" in labels else labels[0]
    if baseline not in labels:
        raise LapsbenchError(f"--baseline: {baseline!r} is not among the schedulers — expected one of: "
                             f"{', '.join(labels)}")
    return baseline


def load_results(dirs: Sequence[Path], baseline: str | None, schedulers: Sequence[str] | None = None,
                 resamples: int = BOOTSTRAP_RESAMPLES) -> Comparison:
    """Rebuild a comparison from saved `run` or `compare` results directories, without simulating.

    Refused (one line, exit 2): a directory without requests.parquet / meta.json / scenario.toml,
    directories from different traces or lapsbench versions, or whose scenarios differ in anything that
    breaks the pairing (seed, replications, trace window, model, speculation, engine, SLO), and the same
    scheduler at the same load in two directories."""
    if not dirs:
        raise LapsbenchError("compare: expected a scenario TOML or one or more results directories")
    loaded = [read_results_dir(d) for d in dirs]
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
    stats = [x for x in (read_engine_stats(d, raw) for d, _m, raw, _r in loaded) if x is not None]
    engine_stats = pl.concat(stats, how="diagonal_relaxed") if len(stats) == len(loaded) else None
    return build_comparison(requests, name=scenario.name, seed=scenario.seed, slo=scenario.slo, baseline=base,
                            meta=meta, scenario_toml=(first_dir / "scenario.toml").read_text(), resamples=resamples,
                            engine_stats=engine_stats)


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
