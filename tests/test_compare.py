"""`lapsbench compare`: paired CIs, identical-scheduler zero, reproducibility, rebuild from results,
load sweeps and saturation, bad input. Tiny traces and the fixed step profile keep it fast."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from lapsbench.config.scenario import load_scenario
from lapsbench.errors import LapsbenchError
from lapsbench.results.comparison import load_results
from lapsbench.results.stats import offered_rate, paired_bootstrap_ratio, paired_t_ratio, ssjf_throughput
from lapsbench.run.compare import parse_rates, run_comparison
from lapsbench.schedulers import registry

from cli_helpers import assert_exit_2, lapsbench, write_small_scenario

# Schedulers compared against fcfs in the CI-narrowing test; laps-sd joins automatically once registered.
OTHERS = [name for name in ("las", "srpt", "laps-sd") if name in registry()]


def row(comp, label: str, scale: float | None = None) -> dict:
    summary = comp.summary if scale is None else comp.summary.filter(pl.col("rate_scale") == scale)
    return summary.filter(pl.col("scheduler") == label).to_dicts()[0]


# ----------------------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("other", OTHERS)
def test_paired_ci_narrows_with_replications(tmp_path: Path, other: str) -> None:
    """The 95% CI of fcfs → other (relative change of mean JCT, t over replications) gets narrower as
    replications grow: its half-width is t(R−1)·sd/√R, and with 2, 4, 16 replications the factor
    t/√R falls 9.0 → 1.6 → 0.53, far more than sd estimates move."""
    scenario = load_scenario(write_small_scenario(tmp_path, [("fcfs", "fcfs"), (other, other)], rate_scale=0.3))
    widths = []
    for reps in (2, 4, 16):
        comp = run_comparison(dataclasses.replace(scenario, replications=reps), None, "fcfs")
        r = row(comp, other)
        assert comp.ci_method == "t over replications"
        assert r["jct_mean_change_lo"] <= r["jct_mean_change"] <= r["jct_mean_change_hi"]
        widths.append(r["jct_mean_change_hi"] - r["jct_mean_change_lo"])
    assert widths[0] > widths[1] > widths[2] > 0, widths


@pytest.mark.parametrize("replications", [1, 3])
def test_identical_scheduler_difference_is_exactly_zero(tmp_path: Path, replications: int) -> None:
    """Two [[scheduler]] entries with the same policy and different labels replay identical requests and
    randomness, so every change is exactly 0 with a zero-width interval (both methods), while a different
    scheduler in the same comparison is not."""
    path = write_small_scenario(tmp_path, [("fcfs", "fcfs"), ("fcfs", "fcfs-copy"), ("las", "las")],
                          replications=replications, rate_scale=0.3)
    comp = run_comparison(load_scenario(path), None, "fcfs")
    copy = row(comp, "fcfs-copy")
    for m in ("jct", "ttft", "tpot"):
        assert copy[f"{m}_mean_change"] == 0.0
        assert copy[f"{m}_mean_change_lo"] == 0.0 and copy[f"{m}_mean_change_hi"] == 0.0
        assert copy[f"{m}_mean_change_boot_lo"] == 0.0 and copy[f"{m}_mean_change_boot_hi"] == 0.0
    if replications >= 2:
        assert copy["jct_mean_change_t_lo"] == 0.0 and copy["jct_mean_change_t_hi"] == 0.0
        assert comp.ci_method == "t over replications"
    else:
        assert math.isnan(copy["jct_mean_change_t_lo"])
        assert comp.ci_method == "paired bootstrap over requests"
    assert row(comp, "las")["jct_mean_change"] != 0.0


def test_interval_methods_on_known_data() -> None:
    """x = 0.8·b exactly: both methods give −20% with a zero-width interval (every resample and every
    replication has the same ratio); with noise the interval brackets the estimate."""
    b = np.random.default_rng(1).exponential(1.0, (200, 4))
    for interval in (paired_t_ratio(0.8 * b, b), paired_bootstrap_ratio(0.8 * b, b, seed=3)):
        assert interval.estimate == pytest.approx(-0.2, abs=1e-12)
        assert interval.hi - interval.lo == pytest.approx(0.0, abs=1e-12)
    noisy = 0.8 * b + np.random.default_rng(2).normal(0, 0.1, b.shape)
    t, boot = paired_t_ratio(noisy, b), paired_bootstrap_ratio(noisy, b, seed=3)
    assert t.estimate == boot.estimate
    assert t.lo < t.estimate < t.hi and boot.lo < boot.estimate < boot.hi


def test_ssjf_throughput_definition() -> None:
    """N = 9 completions at 1..9 s (given unsorted): k = ⌊0.25·8⌋ = 2, t_k = 3 s (the 3rd completion),
    so 2/3 requests/s; fewer than five requests give k = 0 → NaN."""
    assert ssjf_throughput(np.array([9, 1, 8, 2, 7, 3, 6, 4, 5], float)) == pytest.approx(2 / 3)
    assert math.isnan(ssjf_throughput(np.array([1.0, 2.0, 3.0, 4.0])))
    assert offered_rate(np.array([0.0, 1.0, 2.0, 4.0])) == pytest.approx(0.75)


def test_parse_rates() -> None:
    specs = parse_rates("0.5, 1,2rps")
    assert [(s.value, s.absolute) for s in specs] == [(0.5, False), (1.0, False), (2.0, True)]
    assert specs[2].rate_scale(4.0) == 0.5
    for bad in ("", ",", "0", "-1", "abc", "1,1", "nanrps", "1,,2"):
        with pytest.raises(LapsbenchError):
            parse_rates(bad)


# ------------------------------------------------------------------------------- sweeps and saturation

def test_sweep_marks_saturation_and_absolute_rates(tmp_path: Path) -> None:
    """Trace: 2 req/s of outputs averaging ~100 tokens at 10 ms per token (~1 s of work each). At ×0.1
    the offered load is ρ ≈ 0.2 and throughput keeps up; at ×1, ρ ≈ 2 and the run ends draining a
    backlog of about half the work, so throughput is well under 95% of the offered rate → saturated.
    An absolute 0.3rps item is converted with the window's native rate and offers exactly 0.3 req/s."""
    path = write_small_scenario(tmp_path, [("fcfs", "fcfs"), ("srpt", "srpt")], k=0, n=80)
    scenario = load_scenario(path)
    comp = run_comparison(scenario, parse_rates("0.1,1,0.3rps"), "fcfs")
    assert len(comp.rate_scales) == 3
    summary = comp.summary
    low = summary.filter(pl.col("rate_scale") == 0.1)
    high = summary.filter(pl.col("rate_scale") == 1.0)
    assert not low["saturated"].any() and (low["throughput_ratio"] > 0.95).all()
    assert high["saturated"].all() and (high["throughput_ratio"] < 0.8).all()
    absolute = summary.filter(~pl.col("rate_scale").is_in([0.1, 1.0]))
    assert absolute["offered_rps"][0] == pytest.approx(0.3, rel=1e-9)
    assert comp.requests.filter(pl.col("rate_scale") == 1.0).height == 2 * 80


# --------------------------------------------------------------------- CLI, files, reproducibility

def test_compare_cli_reproducible_and_rebuildable(tmp_path: Path) -> None:
    """Same seed twice → byte-identical summary.csv and comparison.md and equal requests.parquet; every
    output file and plot exists; `compare OUT` rebuilds the same summary.csv without simulating."""
    path = write_small_scenario(tmp_path, [("fcfs", "fcfs"), ("las", "las"), ("srpt", "srpt")], replications=2)
    outs = []
    for i, plots in ((1, []), (2, ["--no-plots"])):  # plots once: they take most of the time and no file reads them
        out = tmp_path / f"run{i}"
        res = lapsbench("compare", str(path), "--rates", "0.1,0.4", "--out", str(out), "--quiet", *plots)
        assert res.returncode == 0, res.stderr
        outs.append(out)
    a, b = outs
    assert (a / "summary.csv").read_bytes() == (b / "summary.csv").read_bytes()
    assert (a / "comparison.md").read_bytes() == (b / "comparison.md").read_bytes()
    assert_frame_equal(pl.read_parquet(a / "requests.parquet"), pl.read_parquet(b / "requests.parquet"))
    for name in ("summary.json", "summary_by_replication.csv", "scenario.toml", "meta.json"):
        assert (a / name).is_file()
    for plot in ("jct_cdf", "ttft_tpot", "jct_vs_load"):
        for ext in ("png", "svg"):
            assert (a / "plots" / f"{plot}.{ext}").stat().st_size > 1000
    meta = json.loads((a / "meta.json").read_text())
    assert meta["baseline"] == "fcfs" and meta["rate_scales"] == [0.1, 0.4]
    summary = pl.read_csv(a / "summary.csv")
    assert summary.height == 6 and {"jct_mean_change_lo", "ssjf_throughput_rps", "per_token_latency_mean_s",
                                    "goodput_rps", "saturated", "offered_rps"} <= set(summary.columns)
    assert "**" in (a / "comparison.md").read_text()   # best values highlighted

    rebuilt = tmp_path / "rebuilt"
    res = lapsbench("compare", str(a), "--out", str(rebuilt), "--no-plots", "--quiet")
    assert res.returncode == 0, res.stderr
    assert (rebuilt / "summary.csv").read_bytes() == (a / "summary.csv").read_bytes()
    assert "JCT mean" in res.stdout


def test_rebuild_from_run_directories_as_a_sweep(tmp_path: Path) -> None:
    """Two `lapsbench run` results at different rate_scales combine into a two-point comparison equal to
    the one compare simulates itself."""
    dirs = []
    for scale in (0.1, 0.4):
        path = write_small_scenario(tmp_path, [("fcfs", "fcfs"), ("srpt", "srpt")], rate_scale=scale, replications=2)
        out = tmp_path / f"run-{scale}"
        res = lapsbench("run", str(path), "--out", str(out), "--quiet")
        assert res.returncode == 0, res.stderr
        dirs.append(out)
    rebuilt = load_results(dirs, None)
    direct = run_comparison(load_scenario(path), parse_rates("0.1,0.4"), None)
    assert rebuilt.rate_scales == [0.1, 0.4]
    cols = [c for c in direct.summary.columns if c != "policy"]
    assert_frame_equal(rebuilt.summary.select(cols), direct.summary.select(cols))


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    path = write_small_scenario(tmp_path, [("fcfs", "fcfs"), ("srpt", "srpt")])
    out = tmp_path / "never"
    assert_exit_2(lapsbench("compare", str(path), "--baseline", "las", "--out", str(out)), "--baseline", "'las'")
    assert_exit_2(lapsbench("compare", str(path), "--rates", ",", "--out", str(out)), "empty sweep")
    assert_exit_2(lapsbench("compare", str(path), "--schedulers", "nope", "--out", str(out)), "--schedulers", "'nope'")
    assert not out.exists()

    # results from different traces, and from different lapsbench versions
    run_a, run_b, run_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    other = write_small_scenario(tmp_path, [("fcfs", "fcfs")], name="other", trace_seed=1)
    assert lapsbench("run", str(path), "--out", str(run_a), "--quiet").returncode == 0
    assert lapsbench("run", str(other), "--out", str(run_b), "--quiet").returncode == 0
    assert_exit_2(lapsbench("compare", str(run_a), str(run_b), "--out", str(out)), "trace_sha256")
    assert lapsbench("run", str(path), "--out", str(run_c), "--quiet", "--seed", "8").returncode == 0
    assert_exit_2(lapsbench("compare", str(run_a), str(run_c)), "seed")
    meta = json.loads((run_c / "meta.json").read_text())
    meta["lapsbench_version"] = "0.0.1"
    (run_c / "meta.json").write_text(json.dumps(meta))
    assert_exit_2(lapsbench("compare", str(run_a), str(run_c)), "lapsbench_version")
    assert_exit_2(lapsbench("compare", str(run_a), str(run_a)), "also in")
    assert_exit_2(lapsbench("compare", str(tmp_path / "missing")), "not a directory")
    assert not out.exists()


def test_plot_styles_are_stable_and_distinct() -> None:
    """Known names have fixed Okabe–Ito colours; a second label of a policy keeps the policy's colour
    with another line style; an unknown label's style depends only on its name."""
    from lapsbench.results.plots import OKABE_ITO, style

    assert style("fcfs")["color"] == OKABE_ITO[0] and style("laps-sd")["color"] == "#D55E00"
    copy = style("fcfs-copy", "fcfs")
    assert copy["color"] == style("fcfs")["color"] and copy["linestyle"] != style("fcfs")["linestyle"]
    assert style("my-policy") == style("my-policy") and style("my-policy")["color"] in OKABE_ITO
    assert len({style(n)["color"] for n in ("fcfs", "sjf", "ssjf", "las", "srpt", "laps-sd", "mlfq", "rr")}) == 8


def test_select_schedulers_and_baseline(tmp_path: Path) -> None:
    """--schedulers keeps labels (or every label of a policy name) in the order given; the baseline
    defaults to fcfs, else the first scheduler, and must be one of them."""
    from lapsbench.results.comparison import resolve_baseline
    from lapsbench.run.compare import select_schedulers

    s = load_scenario(write_small_scenario(tmp_path, [("fcfs", "fcfs"), ("las", "las-a"), ("las", "las-b"),
                                                ("srpt", "srpt")]))
    assert [x.label for x in select_schedulers(s, ["srpt", "las"]).scheduler] == ["srpt", "las-a", "las-b"]
    assert [x.label for x in select_schedulers(s, ["las-b"]).scheduler] == ["las-b"]
    assert resolve_baseline(["las", "fcfs"], None) == "fcfs"
    assert resolve_baseline(["srpt", "las"], None) == "srpt"
    with pytest.raises(LapsbenchError, match="--baseline"):
        resolve_baseline(["srpt", "las"], "fcfs")
