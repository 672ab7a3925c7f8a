"""Comparison plots (PNG and SVG under OUT/plots/): JCT CDF per scheduler, mean and p99 JCT against load,
TTFT and TPOT per scheduler with 95% CI whiskers (with two or more replications); and the sweep plots,
each main metric against each numeric axis. Legends sit outside the axes, so they never hide data.

Colours come from the Okabe–Ito palette, which stays distinguishable under the common colour-vision
deficiencies; a scheduler keeps its colour (and marker) in every plot of every comparison: known
scheduler names have fixed slots, other labels take a slot from a hash of their name. Matplotlib runs
on the Agg backend (files only, no display needed)."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench.results.comparison import Comparison

OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
# Fixed slots: the baseline-like policies first; laps-sd gets vermillion, the most salient colour.
KNOWN = {"fcfs": 0, "sjf": 1, "ssjf": 2, "las": 3, "srpt": 4, "laps-sd": 5, "mlfq": 6, "rr": 7}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def style(label: str, policy: str | None = None) -> dict[str, Any]:
    """Colour, marker and line style of a scheduler: by label when it is a known name, else by its
    policy name for the colour (so `fcfs-copy` of policy fcfs stays black) with another line style,
    else by a stable hash of the label (sha1, not Python's salted hash)."""
    digest = int(hashlib.sha1(label.encode()).hexdigest(), 16)
    if label in KNOWN:
        slot = KNOWN[label]
        dash = slot % len(LINESTYLES)   # a line style of its own too, so overlapping curves stay apart
    elif policy in KNOWN:
        slot = KNOWN[policy]
        dash = (slot + 1 + digest % (len(LINESTYLES) - 1)) % len(LINESTYLES)   # never the policy's own
    else:
        slot, dash = digest % len(OKABE_ITO), digest // len(OKABE_ITO) % len(LINESTYLES)
    return {"color": OKABE_ITO[slot], "marker": MARKERS[slot], "linestyle": LINESTYLES[dash]}


def _setup() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "svg.hashsalt": "lapsbench", "svg.fonttype": "none",   # reproducible SVG, text stays text
    })
    return plt


def _policies(comp: Comparison) -> dict[str, str | None]:
    if "policy" not in comp.summary.columns:
        return dict.fromkeys(comp.labels)
    return {r["scheduler"]: r["policy"] for r in comp.summary.select("scheduler", "policy").unique(
        subset="scheduler", maintain_order=True).to_dicts()}


def _save(fig: Any, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        paths.append(path)
    return paths


def _replications(comp: Comparison) -> int:
    return int(comp.requests["replication"].n_unique())


def _legend(fig: Any, ax: Any, order: list[str], max_cols: int = 6) -> None:
    """One figure legend of `ax`'s entries below the panels (constrained layout makes room for it), so
    never over the data; entries named in `order` first, in that order."""
    handles, labels = ax.get_legend_handles_labels()
    rank = {label: i for i, label in enumerate(order)}
    pairs = sorted(zip(handles, labels, strict=True), key=lambda hl: rank.get(hl[1], len(rank)))
    fig.legend([h for h, _ in pairs], [lb for _, lb in pairs], loc="outside lower center", frameon=False,
               ncols=min(len(pairs), max_cols))


def figures(comp: Comparison) -> Iterator[tuple[str, Any]]:
    """(name, matplotlib figure) of every plot of a comparison; the load plot only for a sweep (two or
    more load points). The caller closes each figure."""
    plt = _setup()
    policies = _policies(comp)
    for name, draw in (("jct_cdf", _jct_cdf), ("ttft_tpot", _ttft_tpot), ("jct_vs_load", _jct_vs_load)):
        if name == "jct_vs_load" and len(comp.rate_scales) < 2:
            continue
        yield name, draw(plt, comp, policies)


def write_plots(comp: Comparison, out: Path) -> list[Path]:
    """Every plot of a comparison as PNG and SVG under `out`."""
    plt = _setup()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures(comp):
        paths += _save(fig, out, name)
        plt.close(fig)
    return paths


def _offered(comp: Comparison, scale: float) -> float:
    return float(comp.summary.filter(pl.col("rate_scale") == scale)["offered_rps"][0])


def _absolute(comp: Comparison) -> bool:
    return comp.meta.get("load_unit") == "rps"


def load_tick(comp: Comparison, scale: float) -> str:
    """A load point's tick as the user gave it: the offered requests/s for --rates in rps, else the
    multiple of the trace's rate over the offered requests/s (the axis label says so)."""
    if _absolute(comp):
        return f"{_offered(comp, scale):.3g}"
    return f"×{scale:.3g}\n{_offered(comp, scale):.3g}"


def load_axis(comp: Comparison) -> str:
    return ("offered load (requests/s)" if _absolute(comp)
            else "load: multiple of the trace's rate / offered requests/s")


def _point_title(comp: Comparison, scale: float) -> str:
    part = comp.summary.filter(pl.col("rate_scale") == scale)
    sat = " (saturated)" if part["saturated"].any() else ""
    offered = f"{_offered(comp, scale):.3g} req/s offered"
    return f"load {offered}{sat}" if _absolute(comp) else f"load ×{scale:.3g}, {offered}{sat}"


def _grid(plt: Any, panels: int, width: float = 4.6, height: float = 3.6) -> tuple[Any, list[Any]]:
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def _jct_cdf(plt: Any, comp: Comparison, policies: dict[str, str | None]) -> Any:
    """Empirical CDF of JCT over all requests and replications, log time axis, one panel per load."""
    scales = comp.rate_scales
    fig, axes = _grid(plt, len(scales))
    for ax, scale in zip(axes, scales, strict=True):
        point = comp.requests.filter(pl.col("rate_scale") == scale)
        for label in comp.labels:
            jct = np.sort(point.filter(pl.col("scheduler") == label)["jct_s"].to_numpy())
            if jct.size == 0:
                continue
            st = style(label, policies.get(label))
            ax.step(jct, np.arange(1, jct.size + 1) / jct.size, where="post", label=label, color=st["color"],
                    linestyle=st["linestyle"], linewidth=1.8)
        ax.set_xscale("log")
        ax.set_xlabel("job completion time, JCT (s, log scale)")
        ax.set_ylabel("fraction of requests ≤ JCT")
        ax.set_ylim(0, 1.01)
        ax.set_title(_point_title(comp, scale))
    _legend(fig, axes[0], comp.labels)
    fig.suptitle(f"{comp.name}: JCT distribution per scheduler", fontsize=13)
    return fig


def _ttft_tpot(plt: Any, comp: Comparison, policies: dict[str, str | None]) -> Any:
    """Mean TTFT and TPOT per scheduler, grouped by load, with 95% CI whiskers (t over replications)
    when there are two or more replications."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    labels, scales = comp.labels, comp.rate_scales
    reps = _replications(comp)
    width = 0.8 / len(labels)
    for ax, key, unit, scale_by, title in ((axes[0], "ttft", "s", 1.0, "time to first token, TTFT"),
                                           (axes[1], "tpot", "ms", 1000.0, "time per output token, TPOT")):
        for i, label in enumerate(labels):
            st = style(label, policies.get(label))
            rows = comp.summary.filter(pl.col("scheduler") == label)
            by = {r["rate_scale"]: r for r in rows.to_dicts()}
            x = np.arange(len(scales)) + (i - (len(labels) - 1) / 2) * width
            mean = np.array([by[s][f"{key}_mean_s"] if s in by else np.nan for s in scales]) * scale_by
            ci = np.array([_finite(by[s].get(f"{key}_mean_ci95_s")) if s in by else 0.0 for s in scales]) * scale_by
            ax.bar(x, mean, width * 0.92, color=st["color"], label=label, edgecolor="white", linewidth=0.5)
            if reps >= 2:
                ax.errorbar(x, mean, yerr=ci, fmt="none", ecolor="#555555", elinewidth=1.2, capsize=3)
        ax.set_xticks(np.arange(len(scales)))
        ax.set_xticklabels([load_tick(comp, s) for s in scales])
        ax.set_xlabel(load_axis(comp))
        ax.set_ylabel(f"mean {key.upper()} ({unit})")
        ax.set_title(title)
        if len(scales) > 1:
            ax.set_yscale("log")
            ax.set_ylabel(f"mean {key.upper()} ({unit}, log scale)")
    _legend(fig, axes[0], labels)
    ci = f"whiskers = 95% CI over {reps} replications" if reps >= 2 else "1 replication, so no confidence interval"
    fig.suptitle(f"{comp.name}: mean TTFT and TPOT ({ci})", fontsize=13)
    return fig


def _finite(v: Any) -> float:
    return float(v) if v is not None and math.isfinite(v) else 0.0


def _jct_vs_load(plt: Any, comp: Comparison, policies: dict[str, str | None]) -> Any:
    """Mean (with CI whiskers) and p99 JCT against the offered rate; saturated points are hollow and the
    load range from the first saturated point on is shaded."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    summary = comp.summary.sort("rate_scale")
    sat = summary.filter(pl.col("saturated"))
    reps = _replications(comp)
    for ax, key, title in ((axes[0], "jct_mean_s", "mean JCT"), (axes[1], "jct_p99_s", "p99 JCT")):
        for label in comp.labels:
            st = style(label, policies.get(label))
            rows = summary.filter(pl.col("scheduler") == label)
            x, y = rows["offered_rps"].to_numpy(), rows[key].to_numpy()
            yerr = (rows["jct_mean_ci95_s"].fill_null(0.0).fill_nan(0.0).to_numpy()
                    if key == "jct_mean_s" and reps >= 2 else None)
            ax.errorbar(x, y, yerr=yerr, color=st["color"], linestyle=st["linestyle"], linewidth=1.8, capsize=3,
                        label=label)
            s = rows["saturated"].to_numpy()
            ax.scatter(x[~s], y[~s], color=st["color"], marker=st["marker"], s=36, zorder=3)
            ax.scatter(x[s], y[s], facecolors="white", edgecolors=st["color"], marker=st["marker"], s=44,
                       linewidths=1.6, zorder=3)
        if sat.height:
            ax.axvspan(float(sat["offered_rps"].min()), float(summary["offered_rps"].max()) * 1.02,
                       color="#999999", alpha=0.15, lw=0, label="saturated (hollow)")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel(f"{title} (s, log scale)")
        ax.set_title(f"{title} vs load")
    _legend(fig, axes[0], comp.labels)
    ci = "; whiskers = 95% CI of the mean" if reps >= 2 else ""
    fig.suptitle(f"{comp.name}: latency vs load; hollow markers = saturated (throughput < 95% of offered){ci}",
                 fontsize=13)
    return fig


# ------------------------------------------------------------------------------------------------ sweeps

def numeric_axes(summary: pl.DataFrame, axes: list[str]) -> list[str]:
    """The axes (summary columns) with numbers (not booleans) and at least two distinct values."""
    return [a for a in axes if a in summary.columns and summary.schema[a].is_numeric()
            and summary[a].drop_nulls().n_unique() >= 2]


def write_sweep_plots(summary: pl.DataFrame, axes: list[str], mode: str, out: Path, name: str,
                      metrics: tuple[tuple[str, str, float, int], ...]) -> list[Path]:
    """Per numeric axis, one figure (`<axis>.png`/`.svg`) with a panel per metric (summary column, label,
    unit scale, digits): the metric against the axis, a line per scheduler and combination of the other
    axes (colour = scheduler, line style = combination); random sweeps get markers only, since there the
    other axes vary from point to point."""
    out.mkdir(parents=True, exist_ok=True)
    if not summary.height:
        return []
    plt = _setup()
    paths = []
    labels = list(dict.fromkeys(summary["scheduler"].to_list()))
    for axis in numeric_axes(summary, axes):
        others = [a for a in axes if a != axis and a in summary.columns and summary[a].n_unique() > 1]
        combos = (summary.select(others).unique(maintain_order=True).to_dicts() if others and mode == "grid"
                  else [{}])
        fig, panels = _grid(plt, len(metrics), width=4.4, height=3.3)
        for ax, (col, title, scale, _) in zip(panels, metrics, strict=True):
            for label in labels:
                st = style(label)
                for i, combo in enumerate(combos):
                    rows = summary.filter(pl.col("scheduler") == label)
                    for k, v in combo.items():
                        rows = rows.filter(pl.col(k).is_null() if v is None else pl.col(k) == v)
                    rows = rows.sort(axis)
                    x, y = rows[axis].to_numpy(), rows[col].cast(pl.Float64).to_numpy() * scale
                    tag = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in combo.items())
                    line = LINESTYLES[i % len(LINESTYLES)] if len(combos) > 1 else st["linestyle"]
                    ax.plot(x, y, color=st["color"], marker=MARKERS[i % len(MARKERS)] if len(combos) > 1
                            else st["marker"], markersize=5, linestyle="none" if mode == "random" else line,
                            linewidth=1.6, label=f"{label} ({tag})" if tag else label)
            finite = summary[col].cast(pl.Float64).drop_nans().drop_nulls()
            if finite.len() and float(finite.min()) > 0 and float(finite.max()) / float(finite.min()) > 20:
                ax.set_yscale("log")
            ticks = summary[axis].drop_nulls().unique().sort().to_list()
            if len(ticks) <= 12 and mode != "random":
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])   # the swept values, not 2.5 for k
            ax.set_xlabel(axis)
            ax.set_title(title)
        _legend(fig, panels[0], [], max_cols=4)
        fig.suptitle(f"{name}: main metrics vs {axis}", fontsize=13)
        paths += _save(fig, out, re.sub(r"[^A-Za-z0-9._-]+", "_", axis))
        plt.close(fig)
    return paths
