"""Comparison plots (PNG and SVG under OUT/plots/): JCT CDF per scheduler, mean and p99 JCT against load,
TTFT and TPOT per scheduler with 95% CI whiskers.

Colours come from the Okabe–Ito palette, which stays distinguishable under the common colour-vision
deficiencies; a scheduler keeps its colour (and marker) in every plot of every comparison: known
scheduler names have fixed slots, other labels take a slot from a hash of their name. Matplotlib runs
on the Agg backend (files only, no display needed)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench.compare import Comparison

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


def write_plots(comp: Comparison, out: Path) -> list[Path]:
    """Every plot of a comparison; the load plot only for a sweep (two or more load points)."""
    plt = _setup()
    out.mkdir(parents=True, exist_ok=True)
    policies = _policies(comp)
    paths = []
    for name, draw in (("jct_cdf", _jct_cdf), ("ttft_tpot", _ttft_tpot), ("jct_vs_load", _jct_vs_load)):
        if name == "jct_vs_load" and len(comp.rate_scales) < 2:
            continue
        fig = draw(plt, comp, policies)
        paths += _save(fig, out, name)
        plt.close(fig)
    return paths


def _point_title(comp: Comparison, scale: float) -> str:
    part = comp.summary.filter(pl.col("rate_scale") == scale)
    sat = " (saturated)" if part["saturated"].any() else ""
    return f"load ×{scale:g}: {part['offered_rps'][0]:.3g} req/s offered{sat}"


def _grid(plt: Any, panels: int, width: float = 4.6, height: float = 3.6) -> tuple[Any, list[Any]]:
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
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
    axes[0].legend(loc="lower right", frameon=False)
    fig.suptitle(f"{comp.name}: JCT distribution per scheduler", fontsize=13)
    fig.tight_layout()
    return fig


def _ttft_tpot(plt: Any, comp: Comparison, policies: dict[str, str | None]) -> Any:
    """Mean TTFT and TPOT per scheduler with 95% CI whiskers (t over replications), grouped by load."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    labels, scales = comp.labels, comp.rate_scales
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
            ax.errorbar(x, mean, yerr=ci, fmt="none", ecolor="#555555", elinewidth=1.2, capsize=3)
        ax.set_xticks(np.arange(len(scales)))
        ax.set_xticklabels([f"×{s:g}" for s in scales])
        ax.set_xlabel("load (multiple of the trace's arrival rate)")
        ax.set_ylabel(f"mean {key.upper()} ({unit})")
        ax.set_title(title)
        if len(scales) > 1:
            ax.set_yscale("log")
            ax.set_ylabel(f"mean {key.upper()} ({unit}, log scale)")
    axes[0].legend(frameon=False, ncols=min(len(labels), 4), loc="upper left")
    fig.suptitle(f"{comp.name}: mean TTFT and TPOT, whiskers = 95% CI over replications", fontsize=13)
    fig.tight_layout()
    return fig


def _finite(v: Any) -> float:
    return float(v) if v is not None and math.isfinite(v) else 0.0


def _jct_vs_load(plt: Any, comp: Comparison, policies: dict[str, str | None]) -> Any:
    """Mean (with CI whiskers) and p99 JCT against the offered rate; saturated points are hollow and the
    load range from the first saturated point on is shaded."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    summary = comp.summary.sort("rate_scale")
    sat = summary.filter(pl.col("saturated"))
    for ax, key, title in ((axes[0], "jct_mean_s", "mean JCT"), (axes[1], "jct_p99_s", "p99 JCT")):
        for label in comp.labels:
            st = style(label, policies.get(label))
            rows = summary.filter(pl.col("scheduler") == label)
            x, y = rows["offered_rps"].to_numpy(), rows[key].to_numpy()
            yerr = rows["jct_mean_ci95_s"].fill_null(0.0).fill_nan(0.0).to_numpy() if key == "jct_mean_s" else None
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
    axes[0].legend(frameon=False, loc="upper left")
    fig.suptitle(f"{comp.name}: latency vs load; hollow markers = saturated (throughput < 95% of offered)",
                 fontsize=13)
    fig.tight_layout()
    return fig
