"""Paper scenarios load and validate; `[trace] synth` draws a fresh trace per replication (common to all
schedulers); SSJF's thr25 metric; a small LAPS-SD-like run completes with every scheduler."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from lapsbench.errors import LapsbenchError
from lapsbench.paper_metrics import thr25, versus_baseline
from lapsbench.runner import run_scenario
from lapsbench.scenario import load_scenario, parse_scenario
from lapsbench.workload import trace_sha256

from conftest import REPO

PAPERS = sorted((REPO / "scenarios" / "papers").glob("*.toml"))


@pytest.mark.parametrize("path", PAPERS, ids=[p.stem for p in PAPERS])
def test_paper_scenarios_load(path, monkeypatch):
    monkeypatch.chdir(REPO)
    s = load_scenario(path)
    assert s.scheduler


def test_synth_trace_is_fresh_per_replication_and_shared_by_schedulers(monkeypatch):
    monkeypatch.chdir(REPO)
    s = load_scenario(REPO / "scenarios" / "papers" / "ssjf_no_batching.toml")
    s = dataclasses.replace(s, replications=3)
    req = run_scenario(s).requests
    arrivals = {(r["scheduler"], r["replication"]): r["arrival_s"] for r in
                req.group_by(["scheduler", "replication"]).agg("arrival_s").iter_rows(named=True)}
    assert arrivals[("fcfs", 0)] == arrivals[("ssjf", 0)]
    assert arrivals[("fcfs", 0)] != arrivals[("fcfs", 1)]
    # 0.1 s + 0.02 s per token of service, exactly
    np.testing.assert_allclose(req["attained_s"].to_numpy(), 0.1 + 0.02 * req["output_tokens"].to_numpy())
    table = versus_baseline(req)
    assert set(table["scheduler"]) == {"fcfs", "ssjf", "sjf"}


@pytest.mark.parametrize(("synth", "key"), [({"requests": 5}, "trace.synth.rate"),
                                            ({"requests": 5, "rate": 1.0, "burst": 2}, "trace.synth.burst"),
                                            ({"requests": 0, "rate": 1.0}, "trace.synth.requests")])
def test_bad_synth_names_the_key(synth, key):
    with pytest.raises(LapsbenchError) as err:
        parse_scenario({"trace": {"synth": synth}, "scheduler": [{"name": "fcfs"}]})
    assert str(err.value).startswith(key)


def test_thr25_is_ssjfs_early_completion_rate():
    finish = np.array([5.0, 1.0, 2.0, 9.0, 4.0, 3.0, 7.0, 8.0, 6.0])  # N = 9: k = 2, t_k = 3rd finish = 3
    assert thr25(finish) == pytest.approx(2 / 3.0)


def test_small_laps_sd_like_run_completes(monkeypatch):
    monkeypatch.chdir(REPO)
    s = load_scenario(REPO / "scenarios" / "papers" / "laps_sd_chat.toml")
    s = dataclasses.replace(s, replications=1, trace=dataclasses.replace(s.trace, duration_s=8.0))
    req = run_scenario(s).requests
    per = req.group_by("scheduler").agg(n=pl.len())
    assert per["n"].n_unique() == 1
    assert req["finish_s"].is_not_null().all()


def test_cli_runs_a_synth_scenario(tmp_path):
    """`lapsbench run` on a `[trace] synth` scenario writes results (no trace file to hash)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "lapsbench", "run", "scenarios/papers/ssjf_no_batching.toml",
                           "--quiet", "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    # identified by a hash of the synth parameters, the csv file's content and the seed
    assert meta["trace_sha256"] == trace_sha256(load_scenario(REPO / "scenarios/papers/ssjf_no_batching.toml"))
    assert meta["replications"] == 20
