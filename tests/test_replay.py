"""The replay's decision loop (lapsbench/engine/executor.py) with the executor that runs nothing: it must be the
simulator — the same decisions and per-request records as `run_scenario`, bit for bit, at batch 1 and under
continuous batching with recompute preemption — and its step log must follow docs/steplog.md."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from lapsbench.calibrate.step_fit import price_steps
from lapsbench.config.scenario import parse_scenario
from lapsbench.engine.executor import SimulatedExecutor
from lapsbench.engine.steplog import SCHEMA
from lapsbench.errors import LapsbenchError
from lapsbench.replay.run import replay_scenario
from lapsbench.run.assembly import build_cost
from lapsbench.run.runner import run_scenario

from cli_helpers import lapsbench
from conftest import REPO

EMPIRICAL = {"kind": "empirical", "path": "data/acceptance/specdecode_bench_llama31_8b_h100.parquet",
             "dataset": "sharegpt", "method": "eagle", "mapping": "resample"}


def scenario(engine: dict, schedulers: list[str], acceptance: dict | None = None, n: int = 40,
             rate_scale: float = 0.05, profile: str = "h100-llama3-8b"):
    return parse_scenario({
        "name": "replay-test", "seed": 3,
        "trace": {"path": "traces/azure_conv_2023.parquet", "start_s": 0.0, "duration_s": 600.0,
                  "max_requests": n, "rate_scale": rate_scale},
        "model": {"profile": profile},
        "speculation": {"k": 4, "acceptance": acceptance or {"kind": "fixed", "alpha": 0.7}},
        "engine": engine,
        "scheduler": [{"name": name} for name in schedulers],
    }, base_dir=str(REPO))


def same_records(s) -> tuple[pl.DataFrame, pl.DataFrame]:
    simulated = run_scenario(s).requests
    replayed, steps = replay_scenario(s, SimulatedExecutor())
    assert replayed.requests.equals(simulated), "replay through the simulated executor differs from run"
    return replayed.requests, steps


def check_steplog(steps: pl.DataFrame, requests: pl.DataFrame) -> None:
    assert dict(steps.schema) == SCHEMA
    assert (steps["wall_ms"] > 0).all()
    assert ((steps["prefill_tokens"] > 0) == (steps["prefill_requests"] > 0)).all()
    assert (steps["context_max"] <= steps["context_tokens"]).all()
    assert ((steps["decode_requests"] + steps["prefill_requests"]) >= 1).all()
    for (label,), run in steps.group_by(["scheduler"]):
        assert (run["start_s"].diff().drop_nulls() >= 0).all()
        assert run["step"].to_list() == list(range(run.height))
        mine = requests.filter(pl.col("scheduler") == label)
        # every emitted token is in the log, and the last step ends when the last request finishes
        assert run["emitted_tokens"].sum() == mine["output_tokens"].sum()
        end = run["start_s"][-1] + run["wall_ms"][-1] / 1000
        assert end == pytest.approx(mine["finish_s"].max(), abs=1e-9)


def test_batch1_replay_is_the_simulator() -> None:
    s = scenario({"batching": "none"}, ["fcfs", "las", "laps-sd", "srpt-sd"], EMPIRICAL)
    requests, steps = same_records(s)
    check_steplog(steps, requests)
    assert (steps["decode_requests"] + steps["prefill_requests"] == 1).all()
    # batch 1: one prefill step per request, the rest decode steps
    assert steps.filter(pl.col("prefill_requests") == 1).height == requests.height


def test_continuous_replay_is_the_simulator_with_recompute() -> None:
    # little KV memory and a high load: chunked prefill, full batches, recompute evictions
    s = scenario({"batching": "continuous", "max_batch": 4, "max_batch_tokens": 512, "kv_capacity_tokens": 6000,
                  "preemption": "recompute"}, ["fcfs", "las", "laps-sd"], n=60, rate_scale=1.0)
    requests, steps = same_records(s)
    check_steplog(steps, requests)
    assert requests["preemptions"].sum() > 0
    assert steps["decode_requests"].max() == 4
    assert steps.filter((pl.col("prefill_requests") > 0) & (pl.col("prefill_context_tokens") > 0)).height > 0
    # the log's chunk sums are the engine's: priced from the log, every step costs what the engine charged, bit
    # for bit; from the v1 sums alone (equal chunks assumed) steps with unequal chunks would not
    priced, charged = price_steps(build_cost(s), steps), steps["wall_ms"].to_numpy()
    np.testing.assert_array_equal(priced, charged)
    equal_chunks = price_steps(build_cost(s), steps.drop("prefill_tokens_sq", "prefill_tokens_context"))
    assert (equal_chunks != charged).any()


def test_wall_clock_decisions_follow_the_clock() -> None:
    """An executor whose steps take twice the price: arrivals then meet a slower server, so the schedule
    (and the results) differ from the simulator's, while every request still gets its drawn tokens."""

    class Slow(SimulatedExecutor):
        def clock(self, start, price):
            return start + 2 * price, 2 * price

    s = scenario({"batching": "continuous", "max_batch": 4, "max_batch_tokens": 2048,
                  "preemption": "recompute"}, ["fcfs"], n=30, rate_scale=1.0)
    fast = run_scenario(s).requests
    slow, steps = replay_scenario(s, Slow())
    assert slow.requests["jct_s"].mean() > 1.5 * fast["jct_s"].mean()
    assert slow.requests["output_tokens"].equals(fast["output_tokens"])
    check_steplog(steps, slow.requests)


def test_the_collector_is_off_while_the_clock_runs_and_restored_after() -> None:
    import gc

    seen = []

    class Watch(SimulatedExecutor):
        def execute(self, step):
            seen.append(gc.isenabled())

    s = scenario({"batching": "none"}, ["fcfs", "las"], n=10)
    assert gc.isenabled()
    replay_scenario(s, Watch())
    assert seen and not any(seen)
    assert gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        replay_scenario(s, Watch())
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize(("engine", "key"), [
    ({"batching": "static"}, "engine.batching"),
    ({"batching": "continuous", "preemption": "swap"}, "engine.preemption"),
])
def test_unsupported_engines_are_refused(engine, key) -> None:
    with pytest.raises(LapsbenchError, match=key):
        replay_scenario(scenario(engine, ["fcfs"]), SimulatedExecutor())


def test_free_draft_memory_is_refused() -> None:
    import dataclasses

    from lapsbench.config.speculation import OffUnderLoadSpec

    s = scenario({"batching": "continuous", "preemption": "recompute"}, ["fcfs"])
    s = dataclasses.replace(s, speculation=dataclasses.replace(
        s.speculation, adaptive=OffUnderLoadSpec(batch=8, free_draft_memory=True)))
    with pytest.raises(LapsbenchError, match="speculation.adaptive.free_draft_memory"):
        replay_scenario(s, SimulatedExecutor())


def test_cli_replay_writes_results_and_steplog(tmp_path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(f"""name = "t"
seed = 1
[trace]
path = "{REPO}/traces/azure_conv_2023.parquet"
max_requests = 12
rate_scale = 0.05
[model]
profile = "{REPO}/profiles/h100-llama3-8b.toml"
[speculation]
k = 4
acceptance = {{ kind = "fixed", alpha = 0.6 }}
[[scheduler]]
name = "fcfs"
""")
    out = tmp_path / "out"
    r = lapsbench("replay", str(toml), "--out", str(out), "--executor", "simulated", "--quiet")
    assert r.returncode == 0, r.stderr
    for name in ("requests.parquet", "summary.csv", "summary.json", "meta.json", "scenario.toml", "steps.parquet"):
        assert (out / name).is_file(), name
    assert pq.read_schema(out / "steps.parquet").metadata[b"lapsbench.steplog"] == b"1"
    steps = pl.read_parquet(out / "steps.parquet")
    assert steps.height > 12 and np.all(steps["prefill_requests"].to_numpy()[:1] == 1)
    # what its policies estimated with, for a simulation of it (model.scheduler_profile), named in meta.json
    copy = (out / "scheduler_profile.toml").read_bytes()
    assert copy == (REPO / "profiles" / "h100-llama3-8b.toml").read_bytes()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["scheduler_profile_sha256"] == meta["profile_sha256"] == hashlib.sha256(copy).hexdigest()


def test_cli_replay_without_torch_or_cuda_is_one_line(tmp_path) -> None:
    """`--executor torch`: no torch → one line, exit 2; torch but no CUDA → one line, exit 2."""
    r = lapsbench("replay", str(REPO / "scenarios/quickstart.toml"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "replay" in r.stderr
    assert not (tmp_path / "o").exists()


def test_cli_replay_pins_to_a_cpu(tmp_path) -> None:
    """--cpu N runs the replay on CPU N (meta.json says so); a CPU the process may not use is one line, exit 2,
    before any work."""
    import json
    import os

    allowed = sorted(os.sched_getaffinity(0))
    toml = tmp_path / "s.toml"
    toml.write_text(f"""name = "t"
[trace]
path = "{REPO}/traces/azure_conv_2023.parquet"
max_requests = 8
[model]
profile = "{REPO}/profiles/h100-llama3-8b.toml"
[[scheduler]]
name = "fcfs"
""")
    r = lapsbench("replay", str(toml), "--out", str(tmp_path / "bad"), "--executor", "simulated", "--cpu",
                  str(max(allowed) + 1000))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--cpu" in r.stderr and str(max(allowed) + 1000) in r.stderr and not (tmp_path / "bad").exists()
    r = lapsbench("replay", str(toml), "--out", str(tmp_path / "ok"), "--executor", "simulated", "--quiet",
                  "--cpu", str(allowed[-1]))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ok" / "meta.json").read_text())["replay"]["cpus"] == [allowed[-1]]


def test_prefill_buckets_cover_every_prompt_length_once() -> None:
    """The warm list is the distinct padded prompt lengths: every chunk a batch-1 replay runs is in it."""
    from lapsbench.replay.torch_engine import PREFILL_TOKENS, prefill_bucket, prefill_buckets

    prompt = np.array([1, 63, 64, 65, 65, 300, 4095, 64])
    buckets = prefill_buckets(prompt)
    assert buckets == [64, 128, 320, 4096]
    assert all(b % PREFILL_TOKENS == 0 for b in buckets)
    assert {prefill_bucket(int(c)) for c in prompt} == set(buckets)


def test_a_per_length_prefill_table_prices_back_from_the_log(tmp_path) -> None:
    """With a profile whose [step] prefill_bucket_ms corrects each chunk by its padded length, the replay's log
    (which lists each step's chunks) still prices back to the engine's step times bit for bit."""
    profile = tmp_path / "table.toml"
    table = ", ".join(f"{x:.3f}" for x in np.random.default_rng(2).uniform(-1.0, 2.0, 8))
    profile.write_text((REPO / "profiles" / "h100-llama3-8b.toml").read_text()
                       + f"\n[step]\nprefill_bucket_tokens = 64\nprefill_bucket_ms = [{table}]\n")
    s = scenario({"batching": "continuous", "max_batch": 4, "max_batch_tokens": 512, "kv_capacity_tokens": 6000,
                  "preemption": "recompute"}, ["fcfs", "las"], n=60, rate_scale=1.0, profile=str(profile))
    assert build_cost(s).step.prefill_bucket_ms
    requests, steps = same_records(s)
    assert steps.filter(pl.col("prefill_requests") > 1).height > 0
    np.testing.assert_array_equal(price_steps(build_cost(s), steps), steps["wall_ms"].to_numpy())
