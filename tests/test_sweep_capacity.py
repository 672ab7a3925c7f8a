"""Capacity search against the analytic M/M/1 rate (baselines.md §5: E[T] = 1/(μ − λ)).

Set-up: Poisson arrivals at 1 request/s in the trace, geometric output lengths with mean 100 tokens, the
`fixed` profile at 10 ms a step, k = 0 and 1-token prompts with no prefill cost: service is 0.01·Geometric
(mean 1 s, SCV 0.99 — exponential for practical purposes), so at rate scale r the server is M/M/1 with
μ = 1 and λ = r. An SLO of mean JCT ≤ 2 s gives λ* = μ − 1/2 = 0.5 (the exact M/G/1 value with SCV 0.99 is
2/3.99 = 0.50125, inside the tolerance).

Statistical slack: the rate found on one finite sample path scatters around λ*. Over 60 independent
40,000-request paths (Lindley recursion, bisection to 0.001) the found rate had mean 0.4997 and standard
deviation 0.0075, so we accept |found − λ*| ≤ tolerance + 3σ = 0.01 + 0.0225. The trace seed is fixed, so
the test is deterministic; the slack says why the check is meaningful, not that it may flake."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lapsbench.run.sweep import load_sweep, run_sweep
from lapsbench.trace.schema import write_trace
from lapsbench.trace.synth import synth_trace

N_REQUESTS = 40_000
SLO_JCT_S = 2.0
TOLERANCE = 0.01
SIGMA = 0.0075
LAMBDA_STAR = 1.0 - 1.0 / SLO_JCT_S  # M/M/1 with μ = 1: 1/(μ − λ*) = SLO


def test_capacity_search_finds_the_mm1_rate(tmp_path: Path) -> None:
    write_trace(synth_trace(N_REQUESTS, 1.0, output="geometric:mean=100", prompt="fixed:1", seed=7),
                tmp_path / "mm1.parquet")
    path = tmp_path / "capacity.toml"
    path.write_text(f"""
[scenario]
name = "mm1"
[scenario.trace]
path = "mm1.parquet"
[scenario.model]
profile = {{ kind = "fixed", step_s = 0.01 }}
[scenario.speculation]
k = 0
[[scenario.scheduler]]
name = "fcfs"

[sweep]
name = "mm1-capacity"

[capacity]
key = "trace.rate_scale"
lo = 0.2
hi = 0.9
tolerance = {TOLERANCE}
slo = {{ jct_mean_s = {SLO_JCT_S} }}
""")
    out = tmp_path / "out"
    result = run_sweep(load_sweep(path, out=out), workers=1)
    assert result.capacity is not None and result.failed == 0
    row = result.capacity.row(0, named=True)
    assert row["scheduler"] == "fcfs" and row["status"] == "ok"
    found, upper = row["capacity"], row["upper"]
    # the search itself: a bracket no wider than the tolerance, met at the bottom and missed at the top
    assert 0 < upper - found <= TOLERANCE
    summary = pl.read_csv(out / "summary.csv")
    jct = dict(zip(summary["trace.rate_scale"], summary["jct_mean_s"], strict=True))
    assert jct[found] <= SLO_JCT_S < jct[upper]
    assert row["jct_mean_s_at_capacity"] == pytest.approx(jct[found])
    assert summary["kind"].unique().to_list() == ["capacity"]
    assert (out / "capacity.csv").is_file()
    # against the analytic M/M/1 rate
    assert abs(found - LAMBDA_STAR) <= TOLERANCE + 3 * SIGMA, f"found {found:.4f}, M/M/1 λ* = {LAMBDA_STAR}"
