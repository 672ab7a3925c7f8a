"""Installed, not checked out: the profiles, traces, scenarios and acceptance data ship inside the package;
profile names resolve from any directory (and from the user's profile folders); shipped scenarios resolve
their paths next to themselves; `lapsbench init` writes a runnable quickstart. The slow test builds the
wheel, installs it in a fresh virtual environment and runs the quickstart from an empty directory."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import polars as pl
import pytest

from lapsbench.config.scenario import EmpiricalAcceptanceSpec, load_scenario
from lapsbench.errors import LapsbenchError
from lapsbench.models.acceptance import EmpiricalAcceptance
from lapsbench.models.cost import find_profile
from lapsbench.resources import ACCEPTANCE_FILE, DATA_DIR, PROFILES_DIR, SCENARIOS_DIR, write_quickstart
from lapsbench.run.assembly import (
    build_acceptance,
    build_cost,
    load_workload,
    profile_path,
    synth_options,
    trace_sha256,
)
from lapsbench.run.sweep import grid_points, load_sweep

from cli_helpers import lapsbench
from conftest import REPO

SHIPPED = sorted(p for p in SCENARIOS_DIR.rglob("*.toml") if p.parent.name != "sweeps")
SCHEDULERS = ["fcfs", "sjf", "las", "srpt", "ssjf", "laps-sd"]


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory outside the checkout, with no user profile folders."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("LAPSBENCH_PROFILES", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return cwd


CHECKOUT_DATA = (REPO / "lapsbench" / "data").resolve()  # the imported package may be an installed copy (CI)


def test_checkout_links_reach_the_package_data():
    for name in ("profiles", "traces", "scenarios"):
        assert (REPO / name).resolve() == CHECKOUT_DATA / name
    assert (REPO / "data" / "acceptance").resolve() == CHECKOUT_DATA / "acceptance"
    assert ACCEPTANCE_FILE.parent == DATA_DIR / "acceptance"


@pytest.mark.parametrize("scenario", SHIPPED, ids=lambda p: str(p.relative_to(SCENARIOS_DIR)))
def test_shipped_scenarios_resolve_next_to_themselves(elsewhere: Path, scenario: Path):
    """From an empty directory, via the checkout's link or the package path alike."""
    for path, root in ((scenario, DATA_DIR.resolve()),
                       (REPO / "scenarios" / scenario.relative_to(SCENARIOS_DIR), CHECKOUT_DATA)):
        s = load_scenario(path)
        if s.trace.synth:
            files = [Path(v[4:].rsplit(":", 1)[0]) for v in synth_options(s).values() if str(v).startswith("csv:")]
        else:
            files = [s.resolve(s.trace.path)]
        if isinstance(s.speculation.acceptance, EmpiricalAcceptanceSpec) and s.speculation.acceptance.path:
            files.append(s.resolve(s.speculation.acceptance.path))
        assert files and all(f.is_file() and f.resolve().is_relative_to(root) for f in files), files
        if isinstance(s.model.profile, str):
            assert profile_path(s).parent == PROFILES_DIR


def test_shipped_sweep_loads_from_anywhere(elsewhere: Path):
    points = grid_points(load_sweep(SCENARIOS_DIR / "sweeps" / "load-vs-k.toml"))
    assert len(points) == 6
    assert all(Path(p.scenario.trace.path).is_relative_to(DATA_DIR) for p in points)


def test_named_profile_resolves_from_any_directory(elsewhere: Path):
    assert find_profile("h100-llama2-7b") == PROFILES_DIR / "h100-llama2-7b.toml"
    s = load_scenario(SCENARIOS_DIR / "quickstart.toml")
    assert build_cost(s).meta["target"] == "llama2-7b"
    with pytest.raises(LapsbenchError) as err:
        find_profile("h999-nothing")
    assert "'h100-llama2-7b'" in str(err.value)  # the shipped names are offered, wherever we are


def test_user_profile_folders_come_first(elsewhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """$LAPSBENCH_PROFILES, then ./profiles, then ~/.config/lapsbench/profiles, then the package."""
    source = PROFILES_DIR / "h200-llama2-7b.toml"
    user = tmp_path / "config" / "lapsbench" / "profiles"
    env = tmp_path / "env"
    local = elsewhere / "profiles"
    for d in (user, env, local):
        d.mkdir(parents=True)
    shutil.copy(source, user / "mygpu.toml")
    assert find_profile("mygpu") == user / "mygpu.toml"
    shutil.copy(source, local / "mygpu.toml")
    assert find_profile("mygpu") == Path("profiles") / "mygpu.toml"
    shutil.copy(source, env / "h100-llama2-7b.toml")  # shadows the shipped profile of that name
    monkeypatch.setenv("LAPSBENCH_PROFILES", os.pathsep.join([str(tmp_path / "missing"), str(env)]))
    assert find_profile("h100-llama2-7b") == env / "h100-llama2-7b.toml"


def test_user_scenario_paths_prefer_the_current_directory(elsewhere: Path, tmp_path: Path):
    """Unchanged for user scenarios: the current directory first, then the scenario's directory."""
    project = tmp_path / "project"
    project.mkdir()
    scenario = project / "s.toml"
    scenario.write_text('[trace]\npath = "t.parquet"\n[model]\nprofile = "profiles/p.toml"\n[[scheduler]]\n'
                        'name = "fcfs"\n')
    for d in (project, elsewhere):
        (d / "t.parquet").write_bytes(b"")
    (project / "profiles").mkdir()
    shutil.copy(PROFILES_DIR / "h100-llama2-7b.toml", project / "profiles" / "p.toml")
    s = load_scenario(scenario)
    assert s.resolve(s.trace.path) == Path("t.parquet")
    assert profile_path(s) == project / "profiles" / "p.toml"
    (elsewhere / "t.parquet").unlink()
    assert s.resolve(s.trace.path) == project / "t.parquet"


def test_default_empirical_acceptance_is_the_shipped_file(elsewhere: Path):
    s = load_scenario(SCENARIOS_DIR / "papers" / "laps_sd_chat.toml")
    default = EmpiricalAcceptanceSpec(dataset="sharegpt")
    assert default.path == ""
    s = dataclasses.replace(s, trace=dataclasses.replace(s.trace, duration_s=5.0),
                            speculation=dataclasses.replace(s.speculation, acceptance=default))
    w = load_workload(s)
    assert isinstance(build_acceptance(s, w, 0), EmpiricalAcceptance)


def test_init_writes_a_quickstart_and_never_overwrites(elsewhere: Path, monkeypatch: pytest.MonkeyPatch):
    proc = lapsbench("init", "proj", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    scenario = elsewhere / "proj" / "scenarios" / "quickstart.toml"
    assert scenario.read_bytes() == (SCENARIOS_DIR / "quickstart.toml").read_bytes()
    trace = elsewhere / "proj" / "traces" / "azure_conv_2023.parquet"
    assert trace.read_bytes() == (DATA_DIR / "traces" / "azure_conv_2023.parquet").read_bytes()
    monkeypatch.chdir("proj")
    s = load_scenario("scenarios/quickstart.toml")
    assert s.resolve(s.trace.path).resolve() == trace
    monkeypatch.chdir(elsewhere)
    scenario.write_text("# mine\n")
    proc = lapsbench("init", "proj", cwd=elsewhere)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert scenario.read_text() == "# mine\n"
    (elsewhere / "file").write_text("")
    with pytest.raises(LapsbenchError, match="cannot write"):
        write_quickstart(elsewhere / "file")


def test_packaged_quickstart_runs_from_an_empty_directory(elsewhere: Path):
    """`python -m lapsbench run <package>/data/scenarios/quickstart.toml` from a directory that has none
    of the checkout's files: trace and profile come from the package."""
    proc = lapsbench("run", SCENARIOS_DIR / "quickstart.toml", "--quiet", "--out", "qs", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "quickstart: 1445 requests" in proc.stdout and "laps-sd" in proc.stdout
    assert pl.read_csv(elsewhere / "qs" / "summary.csv")["scheduler"].to_list() == SCHEDULERS
    # the saved scenario names its files by absolute path, so it runs again from anywhere
    saved = load_scenario(elsewhere / "qs" / "scenario.toml")
    assert Path(saved.trace.path).is_absolute() and Path(saved.trace.path).is_file()
    meta = json.loads((elsewhere / "qs" / "meta.json").read_text())
    assert meta["trace_sha256"] == trace_sha256(saved)


def _site_packages() -> list[str]:
    """This interpreter's site-packages, where lapsbench's dependencies are installed."""
    return [p for p in [*site.getsitepackages(), site.getusersitepackages()] if Path(p).is_dir()]


@pytest.mark.slow
def test_wheel_installs_and_runs_the_quickstart_from_an_empty_directory(tmp_path: Path):
    """Build the wheel, install it (no dependencies) into a fresh virtual environment that sees only this
    interpreter's installed dependencies, then `lapsbench init` + the quickstart from an empty folder."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "lapsbench", source / "lapsbench", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("lapsbench-*.whl")
    assert wheel.stat().st_size < 2_000_000  # profiles, traces (~0.7 MB) and acceptance data included
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"lapsbench/data/profiles/h100-llama2-7b.toml", "lapsbench/data/scenarios/quickstart.toml",
            "lapsbench/data/traces/azure_conv_2023.parquet",
            "lapsbench/data/acceptance/specdecode_bench_llama31_8b_h100.parquet"} <= names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies (numpy, numba, polars, ...) come from this interpreter: appended after the venv's own
    # site-packages, so the installed lapsbench wins over any other copy
    Path(purelib, "deps.pth").write_text("\n".join(_site_packages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                             capture_output=True, text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stderr
    work = tmp_path / "empty"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import lapsbench; print(lapsbench.__file__)"], cwd=work,
                           capture_output=True, text=True, env=env, check=True).stdout
    assert Path(where.strip()).is_relative_to(env_dir)
    script = env_dir / "bin" / "lapsbench"
    init = subprocess.run([str(script), "init", "."], cwd=work, capture_output=True, text=True, env=env, timeout=120)
    assert init.returncode == 0, init.stderr
    run = subprocess.run([str(script), "run", "scenarios/quickstart.toml", "--quiet"], cwd=work,
                         capture_output=True, text=True, env=env, timeout=1200)
    assert run.returncode == 0, run.stderr
    assert "quickstart: 1445 requests" in run.stdout
    assert pl.read_csv(work / "results" / "quickstart" / "summary.csv")["scheduler"].to_list() == SCHEDULERS
