"""`[model] scheduler_profile`: the profile the schedulers estimate with, apart from the one pricing the steps.

A real engine's cost-aware policy (srpt-sd, laps-sd) estimates with some profile while its steps take what the
GPU takes; a simulation of that run must let its policies estimate alike (docs/validation.md §0.8). Checked
here: naming the pricing profile itself changes nothing, bit for bit; policies that estimate nothing are
unaffected; srpt-sd's oracle table holds the engine's own steps priced by the believed profile; laps-sd derives
its ladder from it; meta.json names both profiles by hash and `validate` says when two runs' differ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lapsbench.config.scenario import parse_scenario, scenario_to_toml
from lapsbench.engine.steptable import build_step_table
from lapsbench.errors import LapsbenchError
from lapsbench.run.assembly import (
    build_acceptance,
    build_cost,
    build_scheduler_cost,
    load_workload,
    model_identity,
    with_absolute_paths,
)
from lapsbench.run.runner import run_scenario
from lapsbench.schedulers.srpt_sd import SRPTSD

from cli_helpers import assert_no_partial_output, assert_one_line_error, lapsbench
from conftest import REPO

PRICED = "h100-llama3-8b"
BELIEVED = "profiles/replay/h200-replay-llama3-8b.toml"  # a step-log fit: another prefill/decode balance


def scenario(batching: str = "none", believed: str = "", schedulers=("fcfs", "las", "srpt-sd", "laps-sd"),
             priced: str = PRICED, **extra):
    model = {"profile": priced, **({"scheduler_profile": believed} if believed else {})}
    engine = {"batching": batching} if batching == "none" else {"batching": batching, "max_batch": 8}
    return parse_scenario({
        "name": "believed", "seed": 5,
        "trace": {"path": "traces/azure_conv_2023.parquet", "start_s": 600.0, "max_requests": 60,
                  "rate_scale": 0.5},
        "model": model,
        "speculation": {"k": 4, "acceptance": {"kind": "fixed", "alpha": 0.7}, **extra},
        "engine": engine,
        "scheduler": [{"name": n} for n in schedulers],
    }, base_dir=str(REPO))


def by_scheduler(result) -> dict:
    return {k[0]: g.drop("scheduler") for k, g in result.requests.group_by(["scheduler"], maintain_order=True)}


@pytest.mark.parametrize("batching", ["none", "continuous"])
def test_naming_the_pricing_profile_changes_nothing(batching: str) -> None:
    plain = run_scenario(scenario(batching)).requests
    same = run_scenario(scenario(batching, believed=str(REPO / "profiles" / f"{PRICED}.toml"))).requests
    assert same.equals(plain)


def test_only_cost_aware_policies_follow_the_believed_profile() -> None:
    plain = by_scheduler(run_scenario(scenario()))
    other = run_scenario(scenario(believed=BELIEVED))
    believed = by_scheduler(other)
    for name in ("fcfs", "las"):  # they estimate nothing: the same schedule
        assert believed[name].equals(plain[name])
    # srpt-sd ranks by the believed remaining time, so it serves some requests in another order
    assert not believed["srpt-sd"]["finish_s"].equals(plain["srpt-sd"]["finish_s"])
    # laps-sd's ladder is derived from the believed profile: that of a run priced by it
    priced_by_believed = run_scenario(scenario(priced=BELIEVED, schedulers=("laps-sd",)))
    assert other.derived["laps-sd"] == priced_by_believed.derived["laps-sd"] != run_scenario(
        scenario(schedulers=("laps-sd",))).derived["laps-sd"]


def test_the_oracle_table_is_the_engines_steps_priced_by_the_believed_profile() -> None:
    s = scenario(believed=BELIEVED)
    w = load_workload(s)
    cost = build_cost(s)
    believed = build_scheduler_cost(s, cost)
    assert believed is not cost and believed.name != cost.name
    acceptance = build_acceptance(s, w, 0)
    truth = build_step_table(w.request_id, w.prompt_tokens, w.output_tokens, 4, cost, acceptance)
    seen = {}

    def spy(self, state):
        seen["table"] = state.step_table
        seen["cost"] = state.cost
        return original(self, state)

    original = SRPTSD.pack
    SRPTSD.pack = spy
    try:
        run_scenario(scenario(believed=BELIEVED, schedulers=("srpt-sd",)))
    finally:
        SRPTSD.pack = original
    table = seen["table"]
    assert seen["cost"].name == believed.name
    np.testing.assert_array_equal(table.offset, truth.offset)          # the same steps, the same tokens
    np.testing.assert_array_equal(table.cum_tokens, truth.cum_tokens)
    again = build_step_table(w.request_id, w.prompt_tokens, w.output_tokens, 4, believed, acceptance)
    np.testing.assert_array_equal(table.cum_ns, again.cum_ns)          # priced as the believed profile prices
    assert not np.array_equal(table.cum_ns, truth.cum_ns)


def test_meta_names_both_profiles_and_validate_says_when_they_differ(tmp_path: Path) -> None:
    s = scenario(schedulers=("fcfs", "srpt-sd"))
    assert len(set(model_identity(s).values())) == 1
    assert len(set(model_identity(scenario(believed=BELIEVED)).values())) == 2
    toml = tmp_path / "s.toml"  # the same scenario as a file, as a user runs it
    toml.write_text(scenario_to_toml(with_absolute_paths(s)))
    for name, extra in (("a", []), ("b", []), ("c", ["--set", f'model.scheduler_profile="{REPO / BELIEVED}"'])):
        r = lapsbench("run", str(toml), "--out", str(tmp_path / name), "--quiet", *extra)
        assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["profile_sha256"] != meta["scheduler_profile_sha256"]
    same = lapsbench("validate", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "vab"))
    assert same.returncode == 0 and "warning" not in same.stderr
    assert "Both runs' schedulers estimated with the same profile" in (tmp_path / "vab" / "validation.md").read_text()
    differ = lapsbench("validate", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "vac"))
    assert differ.returncode == 0 and "warning: The schedulers estimated with different profiles" in differ.stderr
    data = json.loads((tmp_path / "vac" / "validation.json").read_text())
    assert data["scheduler_estimates"]["same"] is False


def test_a_missing_scheduler_profile_is_one_line(tmp_path: Path) -> None:
    s = REPO / "scenarios" / "validation" / "smoke-b1.toml"
    r = lapsbench("run", str(s), "--set", 'model.scheduler_profile="nope.toml"', "--out", str(tmp_path / "out"))
    assert_one_line_error(r.returncode, r.stderr, "model.scheduler_profile", "nope.toml")
    assert not (tmp_path / "out").exists()
    assert_no_partial_output(tmp_path)
    r = lapsbench("run", str(s), "--set", 'model.scheduler_profile="h100-llama3-8bb"', "--out", str(tmp_path / "out"))
    assert_one_line_error(r.returncode, r.stderr, "model.scheduler_profile: no profile 'h100-llama3-8bb'")


def test_goodput_at_batch_1_refuses_a_scheduler_profile() -> None:
    s = scenario(believed=BELIEVED, adaptive={"kind": "goodput", "k_max": 4})
    with pytest.raises(LapsbenchError, match="model.scheduler_profile"):
        run_scenario(s)
