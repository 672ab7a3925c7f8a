"""Plots: legends never over the data, titles that promise only what is drawn, loads labelled as given,
and the sweep plots (each main metric against each numeric axis)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lapsbench.config.scenario import load_scenario
from lapsbench.results.plots import figures, numeric_axes, write_sweep_plots
from lapsbench.run.compare import parse_rates, run_comparison

from cli_helpers import write_small_scenario


def _comparison(tmp: Path, schedulers: list[str], replications: int, rates: str | None = None):
    """A comparison on 40 requests, fixed 10 ms steps, k = 2 at α = 0.6, rate_scale 0.05."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = write_small_scenario(tmp, [(s, s) for s in schedulers], replications, n=40, name="plots")
    return run_comparison(load_scenario(path), parse_rates(rates) if rates else None, None, resamples=50)


@pytest.mark.parametrize("schedulers", [["fcfs", "las"], ["fcfs", "sjf", "las", "srpt"]])
def test_ttft_tpot_legend_shows_every_label_and_covers_no_bar(tmp_path: Path, schedulers: list[str]) -> None:
    """The single-load case of the report: with the legend inside the axes, two schedulers' bars hid it."""
    comp = _comparison(tmp_path, schedulers, replications=1)
    fig = dict(figures(comp))["ttft_tpot"]
    fig.canvas.draw()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    legend = legends[0]
    assert [t.get_text() for t in legend.get_texts()] == schedulers
    box = legend.get_window_extent()
    bars = [p for ax in fig.axes for p in ax.patches]
    assert len(bars) == 2 * len(schedulers)
    for bar in bars:
        assert not box.overlaps(bar.get_window_extent()), bar
    for ax in fig.axes:   # nor over any panel's plotting area
        assert not box.overlaps(ax.get_window_extent())


def test_titles_promise_whiskers_only_with_replications(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    one = dict(figures(_comparison(tmp_path / "one", ["fcfs", "las"], replications=1, rates="0.05,0.1")))
    assert "95% CI" not in one["ttft_tpot"]._suptitle.get_text()
    assert "1 replication" in one["ttft_tpot"]._suptitle.get_text()
    assert "95% CI" not in one["jct_vs_load"]._suptitle.get_text()
    assert not any(ax.collections for ax in one["ttft_tpot"].axes)   # no whiskers drawn
    two = dict(figures(_comparison(tmp_path / "two", ["fcfs", "las"], replications=2)))
    assert "whiskers = 95% CI over 2 replications" in two["ttft_tpot"]._suptitle.get_text()
    assert all(ax.collections for ax in two["ttft_tpot"].axes)
    plt.close("all")


def test_absolute_rates_are_labelled_in_requests_per_second(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    comp = _comparison(tmp_path, ["fcfs", "las"], replications=1, rates="0.05rps,0.1rps")
    fig = dict(figures(comp))["ttft_tpot"]
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["0.05", "0.1"] and fig.axes[0].get_xlabel() == "offered load (requests/s)"
    cdf = dict(figures(comp))["jct_cdf"]
    assert [ax.get_title() for ax in cdf.axes] == ["load 0.05 req/s offered", "load 0.1 req/s offered"]
    scaled = _comparison(tmp_path / "scaled", ["fcfs", "las"], replications=1, rates="0.05,0.1")
    ax = dict(figures(scaled))["ttft_tpot"].axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert [t.split("\n")[0] for t in ticks] == ["×0.05", "×0.1"] and "requests/s" in ax.get_xlabel()
    plt.close("all")


def test_sweep_plots_one_figure_per_numeric_axis(tmp_path: Path) -> None:
    rows = [{"point": f"p{r}-{k}", "kind": "grid", "trace.rate_scale": r, "speculation.k": k, "scenario.name": "x",
             "scheduler": s, "jct_mean_s": r * (k + 1) * (2 if s == "las" else 1), "tpot_mean_s": 0.01}
            for r in (0.5, 0.8) for k in (0, 2) for s in ("fcfs", "las")]
    summary = pl.DataFrame(rows)
    axes = ["trace.rate_scale", "speculation.k", "scenario.name"]
    assert numeric_axes(summary, axes) == ["trace.rate_scale", "speculation.k"]   # one name: not plotted
    metrics = (("jct_mean_s", "JCT mean s", 1.0, 3), ("tpot_mean_s", "TPOT mean ms", 1000.0, 2))
    paths = write_sweep_plots(summary, axes, "grid", tmp_path, "s", metrics)
    assert sorted(p.name for p in paths) == ["speculation.k.png", "speculation.k.svg", "trace.rate_scale.png",
                                             "trace.rate_scale.svg"]
    svg = (tmp_path / "trace.rate_scale.svg").read_text()
    assert "fcfs (speculation.k=2)" in svg and "las (speculation.k=0)" in svg   # a line per scheduler × k
