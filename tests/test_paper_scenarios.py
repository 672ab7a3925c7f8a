"""Paper scenarios load and validate; `[trace] synth` draws a fresh trace per replication (common to all
schedulers); SSJF's thr25 metric; a small LAPS-SD-like run completes with every scheduler."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from lapsbench.config.scenario import load_scenario, parse_scenario
from lapsbench.errors import LapsbenchError
from lapsbench.results.paper_metrics import thr25, versus_baseline
from lapsbench.run.assembly import trace_sha256
from lapsbench.run.runner import run_scenario

from cli_helpers import lapsbench
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

    out = tmp_path / "out"
    proc = lapsbench("run", "scenarios/papers/ssjf_no_batching.toml", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    # identified by a hash of the synth parameters, the csv file's content and the seed
    assert meta["trace_sha256"] == trace_sha256(load_scenario(REPO / "scenarios/papers/ssjf_no_batching.toml"))
    assert meta["replications"] == 20


LADDER_SCENARIO = """
name = "ladder"
replications = 1
[trace]
path = "{trace}"
start_s = 600.0
duration_s = 20.0
rate_scale = 0.167
[model]
profile = "h100-llama3-8b"
[speculation]
k = 4
[[scheduler]]
name = "laps-sd"
{extra}
[[scheduler]]
name = "ssjf"
"""


def _run(tmp_path, extra: str = ""):
    path = tmp_path / "s.toml"
    path.write_text(LADDER_SCENARIO.format(trace=REPO / "traces" / "azure_conv_2023.parquet", extra=extra))
    return lapsbench("run", str(path), "--quiet", "--out", str(tmp_path / "out"))


def test_meta_records_every_derived_threshold_and_bucket_cut(tmp_path):
    """LAPS-SD's ladder (first quantum = a median prefill + 10 speculative steps of this window) and SSJF's
    cuts (quantiles of the trace's requests outside the window) are fixed once per run, in meta.json."""
    import json

    from lapsbench.models.cost import load_profile_file, sd_step_s
    from lapsbench.models.predictors import quantile_cuts
    from lapsbench.schedulers._common import batch1_prefill_s
    from lapsbench.trace.schema import read_trace
    from lapsbench.trace.slicing import slice_trace

    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    derived = json.loads((tmp_path / "out" / "meta.json").read_text())["derived"]
    thresholds = np.array(derived["laps-sd"]["thresholds"])
    assert thresholds.size == 7 and np.all(np.diff(thresholds) > 0)
    df = read_trace(REPO / "traces" / "azure_conv_2023.parquet")
    window = slice_trace(df, start_s=600.0, duration_s=20.0)
    cost = load_profile_file(REPO / "profiles" / "h100-llama3-8b.toml")
    median = np.array([int(np.median(window["prompt_tokens"].to_numpy()))])
    floor = batch1_prefill_s(cost, 4, median)[0] + 10 * sd_step_s(cost, 4, np.ones(1), median)[0]
    assert thresholds[0] == pytest.approx(floor)
    rest = df.filter(~pl.col("request_id").is_in(window["request_id"].to_list()))["output_tokens"].to_numpy()
    assert derived["ssjf"]["predictor_cuts"] == list(quantile_cuts(rest))


@pytest.mark.parametrize(("extra", "key"), [
    ('perceptible_policy = "lifo"', "perceptible_policy"),
    ("thresholds = [0.5, 0.5, 1.0]", "thresholds"),
    ("thresholds = [-1.0, 1.0]", "thresholds"),
    ("predictor = \"bucketed\"\npredictor_cuts = [300, 100]", "predictor_cuts"),
])
def test_bad_ladder_or_cuts_exit_2_with_one_line(tmp_path, extra, key):
    proc = _run(tmp_path, extra)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "expected" in lines[0]
    assert not (tmp_path / "out").exists()


def test_paper_workloads_keep_each_requests_own_record():
    """Every row of data/workloads/*.csv is one SpecDecode-Bench record: its lengths are that record's, and
    a synth draw carries the record index, so `mapping = "column"` replays that request's own acceptance."""
    from lapsbench.models.acceptance import acceptance_records, load_acceptance_table
    from lapsbench.trace.synth import synth_trace

    path = REPO / "data" / "acceptance" / "specdecode_bench_llama31_8b_h100.parquet"
    table = load_acceptance_table(str(path))
    for name, dataset in (("chat", "sharegpt"), ("code", "instructcoder"), ("reasoning", "sharegpt"),
                          ("stress", "instructcoder")):
        pool = pl.read_csv(REPO / "data" / "workloads" / f"{name}.csv")
        records = table.filter((pl.col("dataset") == dataset) & (pl.col("method") == "eagle")
                               & (pl.col("acc_len").list.len() >= 2))
        lists = acceptance_records(str(path), dataset, "eagle")
        mine = records[pool["acceptance_record"].to_list()]
        assert mine["prompt_tokens"].to_list() == pool["num_prefill_tokens"].to_list()
        assert mine["output_tokens"].to_list() == pool["num_decode_tokens"].to_list()
        assert all(np.array_equal(lists[i], np.asarray(a)) for i, a in
                   zip(pool["acceptance_record"].to_list(), mine["acc_len"].to_list(), strict=True))
    drawn = synth_trace(20, 1.0, lengths=f"csv:{REPO / 'data' / 'workloads' / 'code.csv'}", seed=3)
    pool = pl.read_csv(REPO / "data" / "workloads" / "code.csv")
    joined = drawn.join(pool, on="acceptance_record")
    assert (joined["prompt_tokens"] == joined["num_prefill_tokens"]).all()


def test_paper_workload_offered_load_is_its_rate_scale(monkeypatch):
    """The synth rate is 1 / mean service, so busy time / makespan ≈ rate_scale (0.8) under FCFS."""
    from lapsbench.config.scenario import SchedulerSpec

    monkeypatch.chdir(REPO)
    s = load_scenario(REPO / "scenarios" / "papers" / "code_poisson.toml")
    s = dataclasses.replace(s, replications=1, scheduler=(SchedulerSpec("fcfs", "fcfs", {}),))
    req = run_scenario(s).requests
    rho = req["attained_s"].sum() / (req["finish_s"].max() - req["arrival_s"].min())
    assert 0.7 < rho < 0.9
