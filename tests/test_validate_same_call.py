"""scripts/validate_same_call.sh end to end on the CPU, with committed H200 replays standing in for a
same-lease pair (validation/h200/calib-b1 as the calibration window, b1-eagle as the validation replay): the
fit → simulate → validate chain runs and reports every scheduler of the scenario against its replay."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

BEFORE_REFIT = "validation/scheduler-profiles/h100-llama3-8b-before-refit.toml"


@pytest.mark.slow
def test_fit_simulate_validate_from_a_calibration_replay(tmp_path: Path):
    """(slow: a fit, a four-scheduler simulation and a comparison, ~15 s)"""
    out = tmp_path / "b1"
    run = subprocess.run(["bash", "scripts/validate_same_call.sh", "validation/h200/calib-b1",
                          "validation/h200/b1-eagle", "b1-eagle", str(out)], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO),
                                                 # what that replay's schedulers estimated with
                                                 "SCHEDULER_PROFILE": BEFORE_REFIT})
    assert run.returncode == 0, run.stderr
    profile = (out / "profile.toml").read_text()
    assert "calib-b1/steps.parquet" in profile and '[fit."step log".decode]' in profile
    report = json.loads((out / "compare" / "validation.json").read_text())
    assert report["real"].endswith("validation/h200/b1-eagle") and report["sim"] == str(out / "sim")
    assert report["scheduler_estimates"]["sim"] is not None  # (the 2026-12-01 replay predates the hashes)
    rows = {r["scheduler"]: r for r in report["schedulers"]}
    assert sorted(rows) == ["fcfs", "laps-sd", "las", "srpt-sd"]
    for r in rows.values():  # the simulation used the fitted profile: within 25% of the replay at batch 1
        assert r["requests"] == 60 and abs(r["jct_s_mean_err"]) < 0.25


def test_a_missing_replay_is_one_line_and_exit_2(tmp_path: Path):
    run = subprocess.run(["bash", "scripts/validate_same_call.sh", str(tmp_path / "nope"),
                          "validation/h200/b1-eagle", "b1-eagle", str(tmp_path / "out")], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "nope/steps.parquet" in run.stderr
    assert not (tmp_path / "out").exists()


def test_a_replay_without_its_scheduler_profile_is_one_line_and_exit_2(tmp_path: Path):
    """validation/h200/b1-eagle predates scheduler_profile.toml: without SCHEDULER_PROFILE the script says so."""
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULER_PROFILE"}
    run = subprocess.run(["bash", "scripts/validate_same_call.sh", "validation/h200/calib-b1",
                          "validation/h200/b1-eagle", "b1-eagle", str(tmp_path / "out")], cwd=REPO,
                         capture_output=True, text=True, env=env)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "SCHEDULER_PROFILE" in run.stderr
    assert not (tmp_path / "out").exists()
