"""`lapsbench sweep`: definitions, point identity, resume after a kill, merged results, failures, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from lapsbench.config.scenario import EngineSpec, load_scenario
from lapsbench.errors import LapsbenchError
from lapsbench.run.sweep import grid_overrides, grid_points, load_sweep, run_sweep

from cli_helpers import lapsbench, start_lapsbench
from sweep_helpers import read_dataset, read_summary, write_sweep


def test_grid_zip_random_expand_in_file_order(tmp_path: Path) -> None:
    grid = load_sweep(write_sweep(tmp_path))
    assert grid_overrides(grid) == [
        {"trace.rate_scale": 0.5, "speculation.k": 0}, {"trace.rate_scale": 0.5, "speculation.k": 2},
        {"trace.rate_scale": 0.8, "speculation.k": 0}, {"trace.rate_scale": 0.8, "speculation.k": 2}]
    zip_axes = 'mode = "zip"\n[axes]\n"seed" = [1, 2, 3]\n"speculation.k" = [1, 2, 3]\n'
    zipped = load_sweep(write_sweep(tmp_path, zip_axes, name="z"))
    assert grid_overrides(zipped) == [{"seed": s, "speculation.k": s} for s in (1, 2, 3)]
    rand_axes = ('mode = "random"\nsamples = 5\nseed = 9\n[axes]\n"trace.rate_scale" = { uniform = [0.2, 0.9] }\n'
                 '"speculation.k" = { randint = [0, 4] }\n"scheduler" = [[{name = "fcfs"}], [{name = "srpt"}]]\n')
    first = grid_overrides(load_sweep(write_sweep(tmp_path, rand_axes, name="r")))
    again = grid_overrides(load_sweep(write_sweep(tmp_path, rand_axes, name="r")))
    assert first == again and len(first) == 5
    assert all(0.2 <= p["trace.rate_scale"] <= 0.9 and 0 <= p["speculation.k"] <= 4 for p in first)
    assert {p["scheduler"][0]["name"] for p in first} <= {"fcfs", "srpt"}


def test_point_identity_is_the_resolved_scenario(tmp_path: Path) -> None:
    """Spelling out a default gives the same point; a real change gives another; duplicates collapse."""
    default = EngineSpec().max_batch
    sweep = load_sweep(write_sweep(
        tmp_path, f'[axes]\n"engine.max_batch" = [{default}, {default}]\n"speculation.k" = [2, 3]\n'))
    points = grid_points(sweep)
    assert len(points) == 2  # the default max_batch, listed twice
    base = load_sweep(write_sweep(tmp_path, '[axes]\n"speculation.k" = [2, 3]\n', name="b"))
    assert [p.id for p in grid_points(base)] == [p.id for p in points]


@pytest.mark.parametrize(("axes", "message"), [
    ('[axes]\n"trace.rate_scal" = [1.0]\n', "trace.rate_scal: unknown key; valid keys: duration_s, max_requests"),
    ('[axes]\n"speculation.k" = []\n', "axes.'speculation.k': empty"),
    ('[axes]\n"speculation.k" = [1, -1]\n', "speculation.k: -1"),
    ('[axes]\n"model.profile.step_s" = [0.01]\n"bogus" = [1]\n', "bogus: unknown key"),
    ('mode = "zip"\n[axes]\n"seed" = [1, 2]\n"speculation.k" = [1]\n', "zip mode needs axes of equal length"),
    ('[axes]\n"scheduler" = [[{name = "nope"}]]\n', "nope"),
    ('[axes]\n"seed" = [1]\n[capacity]\nlo = 0.1\nhi = 1.0\ntolerance = 0.1\nslo = { jct_max_s = 1 }\n',
     "capacity.slo.jct_max_s: unknown metric"),
])
def test_bad_definitions_fail_at_load_naming_the_axis(tmp_path: Path, axes: str, message: str) -> None:
    path = write_sweep(tmp_path, axes)
    with pytest.raises(LapsbenchError) as err:
        load_sweep(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = lapsbench("sweep", str(write_sweep(tmp_path, '[axes]\n"trace.nope" = [1]\n', name="bad")), "--quiet")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "axis 'trace.nope'" in bad.stderr and "valid keys" in bad.stderr and "Traceback" not in bad.stderr
    path = write_sweep(tmp_path, '[axes]\n"speculation.k" = [1]\n')
    wrong = lapsbench("sweep", str(path), "--backend", "dask", "--out", str(tmp_path / "o"), "--quiet")
    assert wrong.returncode == 2 and "--backend: 'dask'" in wrong.stderr


def test_sweep_runs_merges_and_resumes_without_recomputing(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path), out=tmp_path / "out")
    first = run_sweep(sweep, workers=1)
    assert (first.points, first.done, first.cached, first.failed) == (4, 4, 0, 0)
    summary = read_summary(tmp_path / "out")
    assert summary.height == 8  # 4 points × 2 schedulers
    assert {"point", "kind", "trace.rate_scale", "speculation.k", "scheduler", "jct_mean_s"} <= set(summary.columns)
    data = read_dataset(tmp_path / "out")
    assert data.height == 4 * 2 * 2 * 300  # points × schedulers × replications × requests
    assert data.group_by("point").agg(pl.col("speculation.k").n_unique())["speculation.k"].to_list() == [1] * 4
    # each point is a standard results directory (lapsbench compare reads these)
    for pid in summary["point"].unique():
        names = {p.name for p in (tmp_path / "out" / "points" / pid).iterdir()}
        assert {"requests.parquet", "summary.csv", "scenario.toml", "meta.json", "point.json"} <= names
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "out" / "points").rglob("*")}
    again = run_sweep(load_sweep(write_sweep(tmp_path), out=tmp_path / "out"), workers=1)
    assert (again.done, again.cached) == (4, 4)
    assert stamps == {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "out" / "points").rglob("*")}
    assert_frame_equal(read_dataset(tmp_path / "out"), data)


def test_process_pool_gives_the_in_process_results(tmp_path: Path) -> None:
    run_sweep(load_sweep(write_sweep(tmp_path), out=tmp_path / "one"), workers=1)
    run_sweep(load_sweep(write_sweep(tmp_path), out=tmp_path / "two"), workers=2)
    assert_frame_equal(read_dataset(tmp_path / "one"), read_dataset(tmp_path / "two"))
    assert_frame_equal(read_summary(tmp_path / "one"), read_summary(tmp_path / "two"))


def test_a_failed_point_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    write_sweep(tmp_path)  # writes the good trace
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    path = write_sweep(tmp_path, '[axes]\n"trace.path" = ["trace.parquet", "broken.parquet"]\n', name="f")
    res = lapsbench("sweep", str(path), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "2 points: 1 done (0 cached), 1 failed" in res.stdout and "not a readable Parquet file" in res.stdout
    errors = list((tmp_path / "out" / "points").glob("*/error.txt"))
    assert len(errors) == 1 and "LapsbenchError" in errors[0].read_text()
    assert read_summary(tmp_path / "out")["point"].n_unique() == 1


def test_a_directory_of_another_definition_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_sweep(load_sweep(write_sweep(tmp_path, '[axes]\n"speculation.k" = [0]\n'), out=out), workers=1)
    other = write_sweep(tmp_path, '[axes]\n"speculation.k" = [0, 1]\n', name="other")
    res = lapsbench("sweep", str(other), "--out", str(out), "--quiet", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "written by a different sweep definition" in res.stderr
    assert json.loads((out / "sweep.json").read_text())["name"] == "test-sweep"


def finished_points(out: Path) -> list[Path]:
    """Point directories with results (temporaries start with a dot and may hold a summary.csv too)."""
    return sorted(p.parent for p in (out / "points").glob("[!.]*/summary.csv"))


def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """SIGKILL after the first point lands; the re-run keeps finished points untouched (same inode and
    mtime), removes the killed run's temporaries, and ends equal to a sweep that was never interrupted."""
    axes = '[axes]\n"trace.rate_scale" = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9]\n'
    path = write_sweep(tmp_path, axes, n=600)
    out = tmp_path / "killed"
    proc = start_lapsbench("sweep", path, "--out", out, "--workers", "1", "--quiet", cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not finished_points(out):
            assert proc.poll() is None and time.monotonic() < deadline, "sweep ended before a point finished"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    finished = finished_points(out)
    assert 1 <= len(finished) < 6, "the kill did not land midway"
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for d in finished for p in d.rglob("*")}

    resumed = run_sweep(load_sweep(path, out=out), workers=1)
    assert resumed.cached == len(finished) and resumed.done == 6 and resumed.failed == 0
    assert stamps == {p: (p.stat().st_ino, p.stat().st_mtime_ns) for d in finished for p in d.rglob("*")}
    assert not list((out / "points").glob(".*"))

    run_sweep(load_sweep(path, out=tmp_path / "straight"), workers=1)
    assert_frame_equal(read_dataset(out), read_dataset(tmp_path / "straight"))
    assert_frame_equal(read_summary(out), read_summary(tmp_path / "straight"))


def test_point_names_spell_the_axis_values() -> None:
    """Exact `key=value` names when the values are plain; the hash appended when the spelling loses
    something (replaced characters, a table value, a long name), so two points never share a folder."""
    from lapsbench.run.sweep import NAME_MAX, point_name

    pid = "0123456789abcdef"
    assert point_name({"trace.rate_scale": 0.2, "speculation.k": 4}, pid) == "trace.rate_scale=0.2,speculation.k=4"
    assert point_name({"seed": 1, "model.draft": "llama-68m", "x.flag": True}, pid) == \
        "seed=1,model.draft=llama-68m,x.flag=true"
    assert point_name({}, pid) == "base"
    assert point_name({"trace.path": "traces/a.parquet"}, pid) == "trace.path=traces_a.parquet-01234567"
    assert point_name({"scheduler": [{"name": "las"}]}, pid).endswith("-01234567")
    long = point_name({"trace.rate_scale": 0.1, "model.draft": "d" * 200}, pid)
    assert len(long) == NAME_MAX + 9 and long.endswith("-01234567")


def test_point_folders_named_by_axis_values_and_resumed(tmp_path: Path) -> None:
    """Folders by axis values, the hash in summary.csv and point.json; a re-run finds every finished
    point again; a folder holding another point's results (other hash) is not taken as finished."""
    out = tmp_path / "out"
    path = write_sweep(tmp_path, '[axes]\n"trace.rate_scale" = [0.5, 0.8]\n"speculation.k" = [0, 2]\n', n=100)
    first = run_sweep(load_sweep(path, out=out), workers=1)
    names = ["trace.rate_scale=0.5,speculation.k=0", "trace.rate_scale=0.5,speculation.k=2",
             "trace.rate_scale=0.8,speculation.k=0", "trace.rate_scale=0.8,speculation.k=2"]
    assert sorted(p.name for p in (out / "points").iterdir()) == names and first.done == 4
    summary = pl.read_csv(out / "summary.csv")
    assert summary.columns[:3] == ["point", "point_id", "kind"]
    ids = {p.name: p.id for p in grid_points(load_sweep(path, out=out))}
    for name, pid, k in summary.select("point", "point_id", "speculation.k").iter_rows():
        assert ids[name] == pid and name.endswith(f"speculation.k={k}")
        info = json.loads((out / "points" / name / "point.json").read_text())
        assert (info["point"], info["point_id"]) == (name, pid)
    assert set(read_dataset(out)["point"].unique()) == set(names)
    again = run_sweep(load_sweep(path, out=out), workers=1)
    assert (again.done, again.cached) == (4, 4)
    stale = out / "points" / names[0] / "point.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "point_id": "something-else"}))
    third = run_sweep(load_sweep(path, out=out), workers=1)
    assert (third.done, third.cached) == (4, 3)
    assert json.loads(stale.read_text())["point_id"] == ids[names[0]]


def test_sweep_cli_table_plots_and_set(tmp_path: Path) -> None:
    """The CLI prints a row per point and scheduler with the axes as columns, plots each metric against
    the numeric axis, and applies --set to the base (an axis key cannot be --set)."""
    path = write_sweep(tmp_path, '[axes]\n"trace.rate_scale" = [0.5, 0.8]\n', n=100)
    res = lapsbench("sweep", str(path), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet",
              "--set", "speculation.acceptance.alpha=0.8", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    table = [line for line in res.stdout.splitlines() if "│" in line]
    assert len(table) == 4 and "trace.rate_scale" in res.stdout and "JCT mean s" in res.stdout
    assert any("0.8" in line and "las" in line for line in table)
    assert {p.name for p in (tmp_path / "out" / "plots").iterdir()} == {"trace.rate_scale.png",
                                                                        "trace.rate_scale.svg"}
    point = load_scenario(tmp_path / "out" / "points" / "trace.rate_scale=0.5" / "scenario.toml")
    assert point.speculation.acceptance.alpha == 0.8
    bad = lapsbench("sweep", str(path), "--out", str(tmp_path / "o2"), "--set", "trace.rate_scale=2", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--set trace.rate_scale" in bad.stderr
    bad = lapsbench("sweep", str(path), "--out", str(tmp_path / "o2"), "--set", "speculation.k=x", cwd=tmp_path)
    assert bad.returncode == 2 and "--set speculation.k: 'x' has the wrong type" in bad.stderr
    assert not (tmp_path / "o2").exists()
