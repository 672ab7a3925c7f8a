"""A run's summary on screen: one rich table per run, split in two on a terminal too narrow for it."""

from __future__ import annotations

import math

import polars as pl
from rich.console import Console
from rich.table import Table


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
