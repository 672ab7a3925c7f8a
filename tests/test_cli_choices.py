"""Choices from the command line: `--schedulers` with any registered scheduler, `--set KEY=VALUE`
overrides validated exactly like the TOML, `trace info --json`, `run --plots`."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from lapsbench.config.scenario import load_scenario, parse_override
from lapsbench.errors import LapsbenchError
from lapsbench.run.compare import select_schedulers
from lapsbench.schedulers import registry

from cli_helpers import assert_exit_2, lapsbench
from conftest import write_canonical_trace

SCENARIO = """
name = "choices"
seed = 3
replications = 1
[trace]
path = "{trace}"
[model]
profile = {{ kind = "fixed", step_s = 0.01, draft_step_s = 0.002 }}
[speculation]
k = 3
acceptance = {{ kind = "fixed", alpha = 0.6 }}
[[scheduler]]
name = "fcfs"
[[scheduler]]
name = "las"
label = "las-tokens"
unit = "tokens"
[output]
dir = "{out}"
"""


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    trace = write_canonical_trace(tmp_path / "trace.parquet", n=40)
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO.format(trace=trace, out=tmp_path / "out"))
    return path


# ------------------------------------------------------------------------------------------ --schedulers

def test_schedulers_pick_scenario_labels_and_any_registered_name(scenario: Path) -> None:
    """A label keeps its TOML parameters, a policy name selects its labels, any other registered name
    comes with default parameters; the order is the one given."""
    s = load_scenario(scenario)
    chosen = select_schedulers(s, ["rr", "las", "fcfs", "laps-sd"]).scheduler
    assert [(x.name, x.label, x.params) for x in chosen] == [
        ("rr", "rr", {}), ("las", "las-tokens", {"unit": "tokens"}), ("fcfs", "fcfs", {}), ("laps-sd", "laps-sd", {})]


def test_unknown_scheduler_lists_the_registered_ones(scenario: Path) -> None:
    with pytest.raises(LapsbenchError) as err:
        select_schedulers(load_scenario(scenario), ["fcfs", "nope"])
    assert "'nope'" in str(err.value) and all(name in str(err.value) for name in registry())
    for command in ("run", "compare"):
        line = assert_exit_2(lapsbench(command, str(scenario), "--schedulers", "fcfs,nope", "--quiet"),
                             "--schedulers", "'nope'", "skip-join-mlfq", "srpt-sd")
        assert "\n" not in line
    assert not (scenario.parent / "out").exists() and not (scenario.parent / "out-compare").exists()


def test_run_with_a_registered_scheduler_not_in_the_toml_and_plots(scenario: Path, tmp_path: Path) -> None:
    """`run --schedulers rr,fcfs --plots`: rr runs with its defaults; the plots of compare are written."""
    out = tmp_path / "picked"
    res = lapsbench("run", str(scenario), "--schedulers", "rr,fcfs", "--plots", "--quiet", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert pl.read_csv(out / "summary.csv")["scheduler"].to_list() == ["rr", "fcfs"]
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["jct_cdf.png", "jct_cdf.svg", "ttft_tpot.png",
                                                                 "ttft_tpot.svg"]
    assert (out / "plots" / "ttft_tpot.png").stat().st_size > 10_000
    assert not list(out.glob(".*"))  # no temporaries left


# ------------------------------------------------------------------------------------------------ --set

@pytest.mark.parametrize(("text", "expected"), [
    ("speculation.k=2", ("speculation.k", 2)),
    ("trace.rate_scale=0.3", ("trace.rate_scale", 0.3)),
    ("engine.batching=continuous", ("engine.batching", "continuous")),        # a bare word is a string
    ("trace.path=traces/a b.parquet", None),                                   # not a bare word: quote it
    ('trace.path="traces/a b.parquet"', ("trace.path", "traces/a b.parquet")),
    ('speculation.acceptance={kind="fixed",alpha=0.6}', ("speculation.acceptance", {"kind": "fixed", "alpha": 0.6})),
    ("speculation.acceptance.use_trace_alpha=true", ("speculation.acceptance.use_trace_alpha", True)),
    ("speculation.k", None), ("=2", None), ("a..b=1", None),
])
def test_parse_override(text: str, expected: tuple | None) -> None:
    if expected is None:
        with pytest.raises(LapsbenchError, match="--set"):
            parse_override(text)
    else:
        assert parse_override(text) == expected


def test_set_overrides_any_key(scenario: Path) -> None:
    s = load_scenario(scenario, ["speculation.k=2", "trace.rate_scale=0.3", "replications=2",
                                 'speculation.acceptance={kind="beta",mean=0.6}', "scheduler.1.unit=steps"])
    assert (s.speculation.k, s.trace.rate_scale, s.replications) == (2, 0.3, 2)
    assert (s.speculation.acceptance.kind, s.speculation.acceptance.mean) == ("beta", 0.6)
    assert s.scheduler[1].params == {"unit": "steps"}
    assert load_scenario(scenario, ["speculation.k=1", "speculation.k=5"]).speculation.k == 5  # the last wins


@pytest.mark.parametrize(("override", "toml_edit", "message"), [
    ("speculation.k=abc", ("k = 3", 'k = "abc"'), "speculation.k: 'abc' has the wrong type — expected an integer"),
    ("speculation.k=2.5", ("k = 3", "k = 2.5"), "speculation.k: 2.5 has the wrong type — expected an integer"),
    ("trace.rate_scale=0", ("[trace]", "[trace]\nrate_scale = 0"), "trace.rate_scale: 0.0 — expected a number > 0"),
    ("trace.nope=1", ("[trace]", "[trace]\nnope = 1"), "trace.nope: unknown key; valid keys: duration_s"),
    ("nope=1", ('name = "choices"', 'name = "choices"\nnope = 1'), "nope: unknown key; valid keys:"),
    ("speculation.acceptance.alpha=1.5", ('alpha = 0.6', 'alpha = 1.5'),
     "speculation.acceptance.alpha: 1.5 — expected a probability in [0, 1)"),
    ("scheduler.1.unit=weeks", ('unit = "tokens"', 'unit = "weeks"'), "scheduler.unit: 'weeks' — expected one of"),
])
def test_set_errors_are_the_toml_errors_naming_set(scenario: Path, override: str, toml_edit: tuple[str, str],
                                                   message: str) -> None:
    """The same bad value through --set and in the TOML gives the same line, with `--set` where the
    file name would be."""
    with pytest.raises(LapsbenchError) as from_set:
        load_scenario(scenario, [override])
    edited = scenario.parent / "edited.toml"
    edited.write_text(scenario.read_text().replace(*toml_edit, 1))
    with pytest.raises(LapsbenchError) as from_toml:
        load_scenario(edited)
    assert message in str(from_set.value)
    assert str(from_set.value) == str(from_toml.value).replace(f"{edited}: ", "--set ", 1)


def test_set_errors_on_the_command_line(scenario: Path) -> None:
    """One line, exit 2, nothing written, for run, compare and sweep; an error elsewhere in the file
    still names the file."""
    assert_exit_2(lapsbench("run", str(scenario), "--set", "speculation.k=abc", "--quiet"),
                  "--set speculation.k: 'abc' has the wrong type")
    assert_exit_2(lapsbench("compare", str(scenario), "--set", "trace.nope=1", "--quiet"),
                  "--set trace.nope: unknown key")
    assert_exit_2(lapsbench("run", str(scenario), "--set", "speculation.k.x=1", "--quiet"),
                  "--set speculation.k: is 3, not a table")
    assert_exit_2(lapsbench("run", str(scenario), "--set", "speculation.k", "--quiet"), "expected KEY.PATH=VALUE")
    assert_exit_2(lapsbench("compare", str(scenario.parent / "out"), "--set", "speculation.k=1"), "--set")
    assert not (scenario.parent / "out").exists() and not (scenario.parent / "out-compare").exists()
    scenario.write_text(scenario.read_text().replace("k = 3", "k = -1"))
    assert_exit_2(lapsbench("run", str(scenario), "--set", "seed=1", "--quiet"), f"{scenario}: speculation.k")


# ------------------------------------------------------------------------------------------ trace info

def test_trace_info_json_parses_and_matches_the_stats() -> None:
    res = lapsbench("trace", "info", "traces/azure_conv_2023.parquet", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["requests"] == 19366 and round(info["mean_rate_per_s"], 2) == 5.53
    assert set(info["output_tokens"]) == {"p50", "p90", "p99", "mean"} and len(info["rate_over_time"]) == 40
