"""The one results writer (contract: requests.parquet, engine_stats.parquet, summary.csv/json,
summary_by_replication.csv, scenario.toml, meta.json), used by `run`, `replay`, sweep points and `compare`."""

from __future__ import annotations

import json
import math
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench import __version__
from lapsbench.fsutil import atomic_dir
from lapsbench.results.comparison import SATURATION_THRESHOLD, Comparison
from lapsbench.results.stats import BOOTSTRAP_RESAMPLES


def environment() -> dict[str, str]:
    """Versions that a result depends on, recorded in every meta.json."""
    return {"python": platform.python_version(), "numpy": np.__version__, "polars": pl.__version__}


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (in nested dicts and lists too) as None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def command_line() -> str:
    """The command as typed, recorded in meta.json."""
    return " ".join(["lapsbench", *sys.argv[1:]])


def write_results_dir(out_dir: Path, requests: pl.DataFrame, engine_stats: pl.DataFrame | None,
                      summary: pl.DataFrame, per_replication: pl.DataFrame, scenario_toml: str,
                      meta: dict[str, Any], summary_head: dict[str, Any] | None = None,
                      extra_files: Callable[[Path], None] | None = None) -> None:
    """Write every results file into a temporary directory that replaces `out_dir` only when complete.
    `summary_head` leads summary.json; `extra_files(tmp)` writes more files into the directory."""
    with atomic_dir(out_dir) as tmp:
        requests.write_parquet(tmp / "requests.parquet", compression="zstd")
        if engine_stats is not None:
            engine_stats.write_parquet(tmp / "engine_stats.parquet")
        summary.write_csv(tmp / "summary.csv")
        per_replication.write_csv(tmp / "summary_by_replication.csv")
        payload = {**(summary_head or {}),
                   "schedulers": [json_safe(row) for row in summary.to_dicts()],
                   "by_replication": [json_safe(row) for row in per_replication.to_dicts()]}
        (tmp / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
        (tmp / "scenario.toml").write_text(scenario_toml)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if extra_files is not None:
            extra_files(tmp)


def write_comparison(out_dir: Path, comp: Comparison, command: str, plots: bool = True) -> None:
    """A comparison's results directory: the results files plus comparison.md and (with `plots`) plots/."""
    from lapsbench.results.render_compare import comparison_markdown

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

    def extra(tmp: Path) -> None:
        (tmp / "comparison.md").write_text(comparison_markdown(comp))
        if plots:
            from lapsbench.results.plots import write_plots

            write_plots(comp, tmp / "plots")

    write_results_dir(out_dir, comp.requests, comp.engine_stats, comp.summary, comp.per_replication,
                      comp.scenario_toml, meta, {"baseline": comp.baseline, "ci_method": comp.ci_method}, extra)
