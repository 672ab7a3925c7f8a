"""Results on disk (contract: requests.parquet, summary.csv/json, scenario.toml, meta.json) and on screen."""

from __future__ import annotations

import json
import math
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from lapsbench import __version__
from lapsbench.fsutil import atomic_dir
from lapsbench.metrics import summarize, summarize_replications
from lapsbench.runner import RunResult
from lapsbench.scenario import Scenario, scenario_to_toml
from lapsbench.workload import trace_identity, with_absolute_paths


def environment() -> dict[str, str]:
    """Versions that a result depends on, recorded in every meta.json."""
    return {"python": platform.python_version(), "numpy": np.__version__, "polars": pl.__version__}


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(out_dir: Path, scenario: Scenario, result: RunResult, command: str,
                  extra_meta: dict | None = None,
                  extra_files: Callable[[Path], None] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Write every result file into a temporary directory that replaces `out_dir` only when complete.
    `extra_meta` joins meta.json; `extra_files(tmp)` writes more files into it (replay: steps.parquet)."""
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
        "wall_s": round(result.wall_s, 3),
        # parameters schedulers fixed from the workload once per run (LAPS-SD's ladder, SSJF's bucket cuts)
        "derived": result.derived or {},
        "command": command,
        **environment(),
        **(extra_meta or {}),
    }
    with atomic_dir(out_dir) as tmp:
        result.requests.write_parquet(tmp / "requests.parquet", compression="zstd")
        if result.engine_stats is not None:
            result.engine_stats.write_parquet(tmp / "engine_stats.parquet")
        summary.write_csv(tmp / "summary.csv")
        per_rep.write_csv(tmp / "summary_by_replication.csv")
        payload = {
            "schedulers": [{k: _json_safe(v) for k, v in row.items()} for row in summary.to_dicts()],
            "by_replication": [{k: _json_safe(v) for k, v in row.items()} for row in per_rep.to_dicts()],
        }
        (tmp / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
        (tmp / "scenario.toml").write_text(scenario_to_toml(with_absolute_paths(scenario)))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if extra_files is not None:
            extra_files(tmp)
    return summary, per_rep


def _fmt(value: object, scale: float = 1.0, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{float(value) * scale:.{digits}f}"


SUMMARY_COLUMNS = ("JCT mean s", "± 95%", "JCT p50 s", "JCT p99 s", "TTFT mean s", "TTFT p99 s", "TPOT mean ms",
                   "req/s", "tok/s")


def summary_table(summary: pl.DataFrame, title: str, columns: tuple[str, ...] = SUMMARY_COLUMNS) -> Table:
    """Per scheduler: JCT mean (± 95% CI over replications) / p50 / p99, TTFT mean / p99, TPOT mean,
    throughput (or the `columns` of these named). The lowest mean JCT is highlighted."""
    table = Table(title=title, header_style="bold")
    table.add_column("scheduler", no_wrap=True)
    for name in columns:
        table.add_column(name, justify="right", no_wrap=True)
    best = float(summary["jct_mean_s"].min())
    for row in summary.iter_rows(named=True):
        mean = _fmt(row["jct_mean_s"])
        if row["jct_mean_s"] == best:
            mean = f"[bold green]{mean}[/]"
        cells = dict(zip(SUMMARY_COLUMNS, (
            mean, _fmt(row.get("jct_mean_ci95_s")), _fmt(row["jct_p50_s"]), _fmt(row["jct_p99_s"]),
            _fmt(row["ttft_mean_s"]), _fmt(row["ttft_p99_s"]), _fmt(row["tpot_mean_s"], 1000, 2),
            _fmt(row["throughput_rps"], 1, 2), _fmt(row["throughput_tok_s"], 1, 0)), strict=True))
        table.add_row(row["scheduler"], *(cells[c] for c in columns))
    return table


def print_summary(summary: pl.DataFrame, title: str, console: Console | None = None) -> None:
    """The summary table; on a terminal too narrow for it, as two tables (JCT; TTFT, TPOT, throughput)
    rather than one with truncated numbers."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
            console = Console(width=160)
    table = summary_table(summary, title)
    if console.measure(table, options=console.options.update(width=10_000)).maximum <= console.width:
        console.print(table)
        return
    console.print(summary_table(summary, title, SUMMARY_COLUMNS[:4]))
    console.print(summary_table(summary, "", SUMMARY_COLUMNS[4:]))


def command_line() -> str:
    return " ".join(["lapsbench", *sys.argv[1:]])
