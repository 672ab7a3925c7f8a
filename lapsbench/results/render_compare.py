"""Render a comparison: rich tables for the terminal and the same tables as Markdown (comparison.md).

The table is transposed — metrics as rows, schedulers as columns — so twenty metrics for four to eight
schedulers fit a terminal and a README without horizontal scrolling. The best value of each metric row
is highlighted (bold green on screen, **bold** in Markdown); ties at the shown precision are all
highlighted."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl
from rich.table import Table

from lapsbench.results.comparison import SATURATION_THRESHOLD, Comparison


@dataclass(frozen=True)
class Row:
    """A metric row: summary column, label with unit, display scale, and which direction is better."""

    key: str
    label: str
    scale: float = 1.0
    better: str = "low"          # "low", "high" or "" (no highlight)
    ci: str = ""                 # column holding a 95% CI half-width, if any
    percent: bool = False


ROWS = (
    Row("jct_mean_s", "JCT mean (s)", ci="jct_mean_ci95_s"),
    Row("jct_p50_s", "JCT p50 (s)"),
    Row("jct_p90_s", "JCT p90 (s)"),
    Row("jct_p99_s", "JCT p99 (s)"),
    Row("ttft_mean_s", "TTFT mean (s)", ci="ttft_mean_ci95_s"),
    Row("ttft_p50_s", "TTFT p50 (s)"),
    Row("ttft_p90_s", "TTFT p90 (s)"),
    Row("ttft_p99_s", "TTFT p99 (s)"),
    Row("tpot_mean_s", "TPOT mean (ms)", 1000.0, ci="tpot_mean_ci95_s"),
    Row("tpot_p50_s", "TPOT p50 (ms)", 1000.0),
    Row("tpot_p90_s", "TPOT p90 (ms)", 1000.0),
    Row("tpot_p99_s", "TPOT p99 (ms)", 1000.0),
    Row("per_token_latency_mean_s", "per-token latency, E2E/output (ms)", 1000.0),
    Row("throughput_rps", "throughput, sustained (req/s)", better="high"),
    Row("throughput_tok_s", "throughput, sustained (output tok/s)", better="high"),
    Row("ssjf_throughput_rps", "throughput, SSJF first 25% (req/s)", better="high"),
    Row("goodput_rps", "goodput under SLO (req/s)", better="high"),
    Row("slo_attainment", "SLO attainment (%)", 100.0, better="high"),
    Row("throughput_ratio", "throughput / offered (%)", 100.0, better=""),
)


def _num(value: Any, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    v = float(value) * scale
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"


def _pct(x: float) -> str:
    text = f"{x * 100:+.1f}"
    return "0.0" if float(text) == 0 else text.replace("-", "−")


def _change(row: dict[str, Any], metric: str) -> tuple[str, float]:
    est = row.get(f"{metric}_mean_change")
    if est is None or not math.isfinite(est):
        return "–", math.nan
    lo, hi = row.get(f"{metric}_mean_change_lo"), row.get(f"{metric}_mean_change_hi")
    text = f"{_pct(est)}%"
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        text += f" [{_pct(lo)}, {_pct(hi)}]"
    return text, est


def point_rows(comp: Comparison, scale: float) -> tuple[list[str], list[tuple[str, list[str], list[bool]]]]:
    """Headers (schedulers) and rows (label, cells, highlight flags) of one load point's table."""
    part = comp.summary.filter(pl.col("rate_scale") == scale)
    records = part.to_dicts()
    headers = [r["scheduler"] for r in records]
    out = []
    for spec in ROWS:
        if spec.key not in part.columns:
            continue
        values = [r[spec.key] for r in records]
        cells = []
        for r, v in zip(records, values, strict=True):
            text = _num(v, spec.scale)
            ci = r.get(spec.ci) if spec.ci else None
            if ci is not None and isinstance(ci, float) and math.isfinite(ci):
                text += f" ± {float(ci) * spec.scale:.2g}"
            cells.append(text)
        out.append((spec.label, cells, _best(values, spec.better, spec.scale)))
    for metric, name in (("jct", "JCT"), ("ttft", "TTFT"), ("tpot", "TPOT")):
        if f"{metric}_mean_change" not in part.columns:
            continue
        cells, ests = [], []
        for r in records:
            if r["scheduler"] == comp.baseline:
                cells.append("baseline")
                ests.append(math.nan)
            else:
                text, est = _change(r, metric)
                cells.append(text)
                ests.append(est)
        out.append((f"{name} mean vs {comp.baseline} (95% CI)", cells, _best(ests, "low", 100.0, digits=1)))
    if "saturated" in part.columns:
        out.append(("saturated", ["yes" if r["saturated"] else "no" for r in records], [False] * len(records)))
    return headers, out


def _best(values: list[Any], better: str, scale: float, digits: int | None = None) -> list[bool]:
    """Which cells hold the best value at the shown precision (nothing when all are equal or missing)."""
    if not better:
        return [False] * len(values)

    def key(v: Any) -> float:
        if v is None or not math.isfinite(v):
            return math.nan
        return round(float(v) * scale, digits) if digits is not None else float(f"{float(v) * scale:.4g}")

    keys = [key(v) for v in values]
    finite = [k for k in keys if math.isfinite(k)]
    if len(finite) < 2 or len(set(finite)) == 1:
        return [False] * len(values)
    best = min(finite) if better == "low" else max(finite)
    return [math.isfinite(k) and k == best for k in keys]


def point_title(comp: Comparison, scale: float) -> str:
    part = comp.summary.filter(pl.col("rate_scale") == scale)
    offered = part["offered_rps"][0] if "offered_rps" in part.columns else math.nan
    reps = int(part["replications"][0])
    requests = part["requests"][0]
    return (f"{comp.name}: load ×{scale:g} of the trace rate ({_num(offered)} req/s offered), {requests:g} requests "
            f"× {reps} replication(s); change CI: {comp.ci_method}")


def rich_tables(comp: Comparison) -> list[Table]:
    """One transposed table per load point, then (for a sweep) mean and p99 JCT against load."""
    tables = []
    for scale in comp.rate_scales:
        headers, rows = point_rows(comp, scale)
        t = Table(title=point_title(comp, scale), header_style="bold", title_justify="left")
        t.add_column("metric")
        for h in headers:
            t.add_column(h, justify="right")
        for label, cells, best in rows:
            t.add_row(label, *[f"[bold green]{c}[/]" if b else c for c, b in zip(cells, best, strict=True)])
        tables.append(t)
    if len(comp.rate_scales) > 1:
        for key, label in (("jct_mean_s", "mean"), ("jct_p99_s", "p99")):
            headers, rows = sweep_rows(comp, key)
            t = Table(title=f"{comp.name}: {label} JCT (s) vs load (* = saturated: throughput under "
                            f"{SATURATION_THRESHOLD:.0%} of the offered rate)",
                      header_style="bold", title_justify="left")
            for h in headers:
                t.add_column(h, justify="right")
            for cells, best in rows:
                t.add_row(*[f"[bold green]{c}[/]" if b else c for c, b in zip(cells, best, strict=True)])
            tables.append(t)
    return tables


def sweep_rows(comp: Comparison, key: str) -> tuple[list[str], list[tuple[list[str], list[bool]]]]:
    """Rows = load points (scale, offered req/s), columns = schedulers; `*` marks saturated points."""
    labels = comp.labels
    headers = ["load ×", "offered req/s", *labels]
    rows = []
    for scale in comp.rate_scales:
        part = comp.summary.filter(pl.col("rate_scale") == scale)
        by = {r["scheduler"]: r for r in part.to_dicts()}
        values = [by[lab][key] if lab in by else None for lab in labels]
        cells = [_num(v) + ("*" if lab in by and by[lab]["saturated"] else "")
                 for lab, v in zip(labels, values, strict=True)]
        offered = part["offered_rps"][0]
        rows.append(([f"{scale:g}", _num(offered), *cells], [False, False, *_best(values, "low", 1.0)]))
    return headers, rows


def _md_table(headers: list[str], rows: list[tuple[list[str], list[bool]]], right_from: int = 1) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if i < right_from else "---:" for i in range(len(headers))) + "|"]
    for cells, best in rows:
        lines.append("| " + " | ".join(f"**{c}**" if b else c for c, b in zip(cells, best, strict=True)) + " |")
    return "\n".join(lines)


def comparison_markdown(comp: Comparison) -> str:
    """comparison.md: the same tables as the terminal, ready for a README or a paper draft."""
    parts = [f"# {comp.name}: scheduler comparison\n",
             f"Baseline **{comp.baseline}**. Changes are the relative change of the mean against the baseline, "
             f"paired on identical requests and acceptance randomness, with a 95% confidence interval "
             f"({comp.ci_method}). Best value per row in **bold**.\n"]
    for scale in comp.rate_scales:
        headers, rows = point_rows(comp, scale)
        parts.append(f"## {point_title(comp, scale)}\n")
        parts.append(_md_table(["metric", *headers], [([label, *cells], [False, *best])
                                                       for label, cells, best in rows]) + "\n")
    if len(comp.rate_scales) > 1:
        for key, label in (("jct_mean_s", "Mean"), ("jct_p99_s", "p99")):
            headers, rows = sweep_rows(comp, key)
            parts.append(f"## {label} JCT (s) vs load\n")
            parts.append(f"`*` = saturated: sustained throughput under {SATURATION_THRESHOLD:.0%} of the offered "
                         f"rate.\n")
            parts.append(_md_table(headers, rows, right_from=0) + "\n")
    return "\n".join(parts)
