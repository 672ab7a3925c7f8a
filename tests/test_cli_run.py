"""`lapsbench run` end to end: results files, determinism, and every bad input → one line, exit 2,
no traceback, no results directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cli_helpers import assert_exit_2, lapsbench
from conftest import write_canonical_trace

SCENARIO = """
name = "t"
seed = 3
replications = 2
[trace]
path = "{trace}"
[model]
profile = {{ kind = "fixed", step_s = 0.01, draft_step_s = 0.002, prefill_s_per_token = 0.0001 }}
[speculation]
k = 3
acceptance = {{ kind = "fixed", alpha = 0.6 }}
[[scheduler]]
name = "fcfs"
[[scheduler]]
name = "las"
[output]
dir = "{out}"
"""


def write_scenario(tmp_path: Path, trace: Path, body: str = SCENARIO, **fmt: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(body.format(trace=trace, out=tmp_path / "out", **fmt))
    return path


def test_run_writes_contract_files(tmp_path: Path, small_trace: Path):
    result = lapsbench("run", str(write_scenario(tmp_path, small_trace)), "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    for name in ("requests.parquet", "summary.csv", "summary.json", "scenario.toml", "meta.json"):
        assert (out / name).is_file(), name
    requests = pl.read_parquet(out / "requests.parquet")
    assert requests.height == 50 * 2 * 2
    for col in ("scheduler", "replication", "request_id", "arrival_s", "first_token_s", "finish_s",
                "prompt_tokens", "output_tokens", "steps", "preemptions", "jct_s", "ttft_s", "tpot_s"):
        assert col in requests.columns, col
    assert np.allclose(requests["jct_s"], requests["finish_s"] - requests["arrival_s"])
    summary = json.loads((out / "summary.json").read_text())
    assert [row["scheduler"] for row in summary["schedulers"]] == ["fcfs", "las"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 3 and len(meta["trace_sha256"]) == 64
    # the resolved scenario reproduces the run
    again = lapsbench("run", str(out / "scenario.toml"), "--quiet", "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "summary.csv").read_bytes() == (out / "summary.csv").read_bytes()
    assert "fcfs" in result.stdout and "las" in result.stdout


def test_same_seed_bit_for_bit_and_other_seed_differs(tmp_path: Path, small_trace: Path):
    scenario = write_scenario(tmp_path, small_trace)
    frames = []
    for i, seed in enumerate(["3", "3", "4"]):
        result = lapsbench("run", str(scenario), "--quiet", "--seed", seed, "--out", str(tmp_path / f"r{i}"))
        assert result.returncode == 0, result.stderr
        frames.append(pl.read_parquet(tmp_path / f"r{i}" / "requests.parquet"))
    assert frames[0].equals(frames[1])
    assert (tmp_path / "r0" / "summary.csv").read_bytes() == (tmp_path / "r1" / "summary.csv").read_bytes()
    assert not frames[0].equals(frames[2])


def test_quickstart_runs(tmp_path: Path):
    """The README's main command works from the repository root on the shipped trace and profile."""
    result = lapsbench("run", "scenarios/quickstart.toml", "--quiet", "--out", str(tmp_path / "qs"))
    assert result.returncode == 0, result.stderr
    summary = pl.read_csv(tmp_path / "qs" / "summary.csv")
    assert summary["scheduler"].to_list() == ["fcfs", "sjf", "las", "srpt", "ssjf", "laps-sd"]
    jct = dict(zip(summary["scheduler"], summary["jct_mean_s"], strict=True))
    assert jct["srpt"] <= jct["sjf"] <= jct["fcfs"]  # size-based policies help on this load


def bad_trace(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "bad.parquet"
    if kind == "missing":
        return tmp_path / "nope.parquet"
    if kind == "not-parquet":
        path.write_text("this is, not, parquet\n1,2,3\n")
        return path
    df = pl.read_parquet(write_canonical_trace(tmp_path / "good.parquet", n=10))
    if kind == "missing-column":
        df = df.drop("output_tokens")
    elif kind == "mistyped-column":
        df = df.with_columns(pl.col("prompt_tokens").cast(pl.String))
    elif kind == "zero-length":
        df = df.with_columns(pl.when(pl.col("request_id") == 4).then(0).otherwise(pl.col("output_tokens"))
                             .alias("output_tokens"))
    elif kind == "negative-length":
        df = df.with_columns(pl.when(pl.col("request_id") == 4).then(-3).otherwise(pl.col("prompt_tokens"))
                             .alias("prompt_tokens"))
    elif kind == "unsorted":
        df = df.with_columns(pl.col("arrival_s").reverse())
    elif kind == "nan":
        df = df.with_columns(pl.when(pl.col("request_id") == 2).then(float("nan")).otherwise(pl.col("arrival_s"))
                             .alias("arrival_s"))
    elif kind == "inf":
        df = df.with_columns(pl.when(pl.col("request_id") == 9).then(float("inf")).otherwise(pl.col("arrival_s"))
                             .alias("arrival_s"))
    df.write_parquet(path)
    return path


@pytest.mark.parametrize(("kind", "needles"), [
    ("missing", ("nope.parquet",)),
    ("not-parquet", ("bad.parquet", "Parquet")),
    ("missing-column", ("bad.parquet", "output_tokens")),
    ("mistyped-column", ("bad.parquet", "prompt_tokens")),
    ("zero-length", ("bad.parquet", "output_tokens", "row 4")),
    ("negative-length", ("bad.parquet", "prompt_tokens", "-3")),
    ("unsorted", ("bad.parquet", "arrival_s")),
    ("nan", ("bad.parquet", "arrival_s", "nan")),
    ("inf", ("bad.parquet", "arrival_s", "inf")),
])
def test_bad_trace(tmp_path: Path, kind: str, needles: tuple[str, ...]):
    result = lapsbench("run", str(write_scenario(tmp_path, bad_trace(tmp_path, kind))), "--quiet")
    assert_exit_2(result, *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("edit", "needles"), [
    (("[output]", "[output]\ncolour = 3"), ("colour", "unknown key", "dir")),
    (("seed = 3", "seed = 3\nfoo = 1"), ("foo", "unknown key")),
    (("k = 3", "k = -1"), ("speculation.k", "-1")),
    (("k = 3", 'k = "four"'), ("speculation.k", "four", "integer")),
    (("alpha = 0.6", "alpha = 1.0"), ("speculation.acceptance.alpha", "1.0", "[0, 1)")),
    (("alpha = 0.6", "alpha = -0.1"), ("speculation.acceptance.alpha", "-0.1")),
    (('path = "{trace}"', 'path = "{trace}"\nrate_scale = 0'), ("trace.rate_scale", "0", "> 0")),
    (('path = "{trace}"', 'path = "{trace}"\nrate_scale = -2.0'), ("trace.rate_scale", "-2.0")),
    (('name = "las"', 'name = "lass"'), ("lass", "unknown scheduler", "did you mean 'las'")),
    (('name = "las"', 'name = "las"\nunit = "hours"'), ("unit", "hours")),
    (('name = "las"', 'name = "las"\nquantum = 3'), ("quantum", "unknown parameter")),
    (("replications = 2", "replications = 0"), ("replications", "0")),
    (('kind = "fixed", alpha', 'kind = "magic", alpha'), ("acceptance.kind", "magic")),
    (("[output]", "[engine]\nbatching = \"continuous\"\nmax_batch = 0\n[output]"), ("engine.max_batch", "0")),
    (("[output]", "[engine]\nbatching = \"paged\"\n[output]"), ("engine.batching", "paged", "continuous")),
    (("[output]", "[engine]\nbatching = \"continuous\"\npreemption = \"drop\"\n[output]"),
     ("engine.preemption", "drop", "recompute")),
    (("[output]", "[engine]\nbatching = \"continuous\"\nmax_batch = 8\nmax_batch_tokens = 16\n[output]"),
     ("engine.max_batch_tokens", "16", "32")),
    (("[output]", "[engine]\nbatching = \"continuous\"\nkv_capacity_tokens = 64\n[output]"),
     ("engine.kv_capacity_tokens", "64", "request")),
    (("[output]", "[engine]\nbatching = \"continuous\"\nadmission = \"polite\"\n[output]"),
     ("engine.admission", "polite", "guarded", "greedy")),
    (("[output]", "[engine]\nbatching = \"continuous\"\nadmission_share = -0.1\n[output]"),
     ("engine.admission_share", "-0.1", ">= 0")),
])
def test_bad_scenario(tmp_path: Path, small_trace: Path, edit: tuple[str, str], needles: tuple[str, ...]):
    body = SCENARIO.replace("{trace}", "{{trace}}").replace(edit[0].replace("{trace}", "{{trace}}"),
                                                            edit[1].replace("{trace}", "{{trace}}"), 1)
    body = body.replace("{{trace}}", "{trace}")
    result = lapsbench("run", str(write_scenario(tmp_path, small_trace, body)), "--quiet")
    assert_exit_2(result, *needles)
    assert not (tmp_path / "out").exists()


def test_missing_scenario_file(tmp_path: Path):
    assert_exit_2(lapsbench("run", str(tmp_path / "none.toml")), "none.toml")


def test_invalid_toml(tmp_path: Path):
    path = tmp_path / "s.toml"
    path.write_text("name = \n")
    assert_exit_2(lapsbench("run", str(path)), "s.toml", "TOML")


def test_unknown_profile(tmp_path: Path, small_trace: Path):
    body = SCENARIO.replace('profile = {{ kind = "fixed", step_s = 0.01, draft_step_s = 0.002, '
                            'prefill_s_per_token = 0.0001 }}', 'profile = "h999-nothing"')
    assert_exit_2(lapsbench("run", str(write_scenario(tmp_path, small_trace, body)), "--quiet"), "h999-nothing")


def test_livelocked_scheduler_exits_2_and_writes_nothing(tmp_path: Path):
    trace = tmp_path / "two.parquet"
    pl.DataFrame({"request_id": [0, 1], "arrival_s": [0.0, 0.0], "prompt_tokens": [200, 200],
                  "output_tokens": [5, 5]}).write_parquet(trace)
    body = SCENARIO.replace("k = 3", "k = 0").replace('name = "fcfs"', 'name = "rr"', 1).replace(
        "[output]", '[engine]\nbatching = "continuous"\nmax_batch = 4\nmax_batch_tokens = 64\n'
        'kv_capacity_tokens = 256\nblock_size = 16\npreemption = "recompute"\nadmission = "greedy"\n[output]')
    result = lapsbench("run", str(write_scenario(tmp_path, trace, body)), "--quiet")
    assert_exit_2(result, "scheduler rr: livelock", "swap", "max_batch_tokens")
    assert not (tmp_path / "out").exists()
