"""The sweep's results on screen: one row per point and scheduler, counts, failures, the capacity table."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from lapsbench.run.sweep.driver import SweepResult


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
