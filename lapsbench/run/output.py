"""A run's results directory: its summaries and meta.json, written by the one results writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from lapsbench import __version__
from lapsbench.config.scenario import Scenario, scenario_to_toml
from lapsbench.results.metrics import summarize, summarize_replications
from lapsbench.results.writer import environment, write_results_dir
from lapsbench.run.assembly import model_identity, trace_identity, with_absolute_paths
from lapsbench.run.runner import RunResult


def write_results(out_dir: Path, scenario: Scenario, result: RunResult, command: str,
                  extra_meta: dict | None = None,
                  extra_files: Callable[[Path], None] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Write every result file of a run into `out_dir` (replaced only when complete); returns the summary and
    the per-replication summary. `extra_meta` joins meta.json; `extra_files(tmp)` writes more files into it
    (replay: steps.parquet)."""
    per_rep = summarize_replications(result.requests, scenario.slo, result.engine_stats)
    summary = summarize(per_rep)
    meta = {
        "lapsbench_version": __version__,
        "scenario": scenario.name,
        "seed": scenario.seed,
        "replications": scenario.replications,
        "schedulers": [s.label for s in scenario.scheduler],
        "requests": result.workload.n,
        **trace_identity(scenario),
        **model_identity(scenario),
        "wall_s": round(result.wall_s, 3),
        # parameters schedulers fixed from the workload once per run (LAPS-SD's ladder, SSJF's bucket cuts)
        "derived": result.derived or {},
        "command": command,
        **environment(),
        **(extra_meta or {}),
    }
    write_results_dir(out_dir, result.requests, result.engine_stats, summary, per_rep,
                      scenario_to_toml(with_absolute_paths(scenario)), meta, extra_files=extra_files)
    return summary, per_rep
