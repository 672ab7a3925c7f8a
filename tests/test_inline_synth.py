"""Inline synthetic traces (`[trace] synth`) in run, compare, compare --rates, sweep and compare DIR...,
identified by a hash of their parameters (csv: files by content) and seed; and `trace synth` defaults that
fit the default profile's context."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from lapsbench.config.scenario import load_scenario
from lapsbench.models.cost import find_profile, load_profile_file
from lapsbench.resources import SCENARIOS_DIR
from lapsbench.run.assembly import trace_sha256
from lapsbench.run.compare import LoadSpec, run_comparison
from lapsbench.run.sweep import load_sweep
from lapsbench.trace.schema import trace_hash
from lapsbench.trace.synth import synth_trace

from cli_helpers import lapsbench

SSJF = SCENARIOS_DIR / "papers" / "ssjf_no_batching.toml"

SCENARIO = """
name = "syn"
seed = 5
replications = 2
[trace]
synth = {{ requests = 40, rate = {rate}, output = "csv:lengths.csv:num_decode_tokens", prompt = "fixed:10" }}
[model]
profile = {{ kind = "fixed", step_s = 0.02, draft_step_s = 0.0, prefill_s_per_token = 0.001 }}
[speculation]
k = 0
[[scheduler]]
name = "fcfs"
[[scheduler]]
name = "sjf"
[output]
dir = "res"
"""


def write_synth_scenario(d: Path, rate: float = 2.0, lengths: tuple[int, ...] = (5, 40, 90)) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "lengths.csv").write_text("num_decode_tokens\n" + "\n".join(map(str, lengths)) + "\n")
    path = d / "syn.toml"
    path.write_text(SCENARIO.format(rate=rate))
    return path


def test_synth_hash_names_parameters_seed_and_csv_content(tmp_path: Path):
    s = load_scenario(write_synth_scenario(tmp_path / "a"))
    digest = trace_sha256(s)
    assert len(digest) == 64
    assert trace_sha256(load_scenario(write_synth_scenario(tmp_path / "b"))) == digest  # same content elsewhere
    assert trace_sha256(dataclasses.replace(s, seed=6)) != digest
    assert trace_sha256(load_scenario(write_synth_scenario(tmp_path / "c", rate=3.0))) != digest
    assert trace_sha256(load_scenario(write_synth_scenario(tmp_path / "d", lengths=(5, 40, 91)))) != digest
    # a file trace is still named by its bytes
    quickstart = load_scenario(SCENARIOS_DIR / "quickstart.toml")
    assert trace_sha256(quickstart) == trace_hash(quickstart.resolve(quickstart.trace.path))


def test_compare_with_rates_on_the_shipped_synth_scenario(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """compare used to crash hashing '<synth replication 0>'; here also with an absolute rps load."""
    monkeypatch.chdir(tmp_path)
    s = dataclasses.replace(load_scenario(SSJF), replications=2)
    comp = run_comparison(s, [LoadSpec(0.5, False), LoadSpec(1.0, True)], None, resamples=50)
    assert comp.meta["trace_sha256"] == trace_sha256(s) and comp.meta["trace_path"] == "[trace] synth"
    assert len(comp.rate_scales) == 2 and comp.labels == ["fcfs", "ssjf", "sjf"]
    assert np.isclose(comp.rate_scales[0], 0.5)


def test_cli_compare_and_compare_dirs_on_synth(tmp_path: Path):
    scenario = write_synth_scenario(tmp_path)
    proc = lapsbench("compare", str(scenario), "--schedulers", "fcfs", "--out", "fcfs", "--no-plots", "--quiet",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "fcfs" / "meta.json").read_text())
    assert meta["trace_sha256"] == trace_sha256(load_scenario(scenario))
    # the same scenario and csv content in another folder is the same trace
    moved = write_synth_scenario(tmp_path / "moved")
    proc = lapsbench("compare", str(moved), "--schedulers", "sjf", "--out", "sjf", "--no-plots", "--quiet",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = lapsbench("compare", "fcfs", "sjf", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sjf" in proc.stdout
    # same parameters, other lengths in the csv file: a different trace, so the runs do not pair
    write_synth_scenario(tmp_path, lengths=(7, 70, 700))
    proc = lapsbench("compare", str(scenario), "--schedulers", "sjf", "--out", "other", "--no-plots", "--quiet",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = lapsbench("compare", "fcfs", "other", cwd=tmp_path)
    assert proc.returncode == 2 and "trace_sha256" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_sweep_over_the_shipped_synth_scenario(tmp_path: Path):
    """sweep used to refuse `trace.path: ''`; points are named by the synth parameters and csv contents."""
    sweep_file = tmp_path / "sw.toml"
    sweep_file.write_text(f'base = "{SSJF}"\n[sweep]\nout = "sw"\n[axes]\n"trace.synth.rate" = [1.0, 2.0]\n'
                          '"replications" = [2]\n')
    proc = lapsbench("sweep", str(sweep_file), "--workers", "1", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ids = sorted(p.name for p in (tmp_path / "sw" / "points").iterdir())
    assert len(ids) == 2
    assert all((tmp_path / "sw" / "points" / pid / "summary.csv").is_file() for pid in ids)
    # ids are stable, and change with the csv file's content (not its path)
    copy = write_synth_scenario(tmp_path / "copy")
    local = tmp_path / "local.toml"
    local.write_text(f'base = "{copy}"\n[axes]\n"trace.synth.rate" = [1.0]\n')
    first = _points(local)
    assert first == _points(local)
    write_synth_scenario(tmp_path / "copy", lengths=(5, 40, 91))
    assert _points(local) != first


def _points(sweep_file: Path) -> list[str]:
    from lapsbench.run.sweep import grid_points

    return [p.id for p in grid_points(load_sweep(sweep_file))]


def test_synth_defaults_fit_the_default_profile():
    """Without length options, `trace synth` used to draw unbounded lognormals (p99 10,624, max 136,188
    prompt tokens at 100,000 requests, beyond the default profile's KV capacity); the defaults now follow
    the Azure conversation trace, clipped to Llama-2-7B's 4096-token context."""
    df = synth_trace(100_000, 5.0, seed=0)
    total = (df["prompt_tokens"] + df["output_tokens"]).to_numpy()
    assert total.max() <= 4096
    assert abs(df["prompt_tokens"].median() - 1020) <= 30 and abs(df["output_tokens"].median() - 129) <= 5
    capacity = load_profile_file(find_profile("h100-llama2-7b")).kv_capacity_tokens
    assert total.max() < capacity

