"""The command line never fights its user (issue 16, parts 2-4 and 11): every usage error, bad file, bad
value and blocked output path ends with exit 2 and one line, before any work and with nothing written; one
regression test per failure that issue listed, and the mistyped inputs tried by hand in a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from lapsbench import __version__

from cli_helpers import (
    FIXED,
    SCENARIO,
    assert_no_partial_output,
    assert_one_line_error,
    cli,
    start_lapsbench,
    write_scenario,
    write_trace,
)
from conftest import REPO

AZ_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
SHORT_ROW = AZ_HEAD + "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396\n" \
    "2023-11-16 18:15:51.0,396,10\n"
CALIB_HEADER = "gpu,model,phase,batch,query_tokens,context,ms_median\n"
UNWRITABLE = "/sys/lapsbench-test"  # not writable, even by root
needs_sys = pytest.mark.skipif(not os.path.isdir("/sys") or os.access("/sys", os.W_OK) and os.getuid() != 0,
                               reason="needs a read-only /sys")


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder with a tiny trace and scenario, a raw CSV with a short row, a file in the way, a
    non-results directory and a header-only calibration CSV."""
    d = tmp_path_factory.mktemp("cli")
    trace = write_trace(d / "t.parquet")
    write_scenario(d / "s.toml", trace, d / "out")
    (d / "short.csv").write_text(SHORT_ROW)
    (d / "good.csv").write_text(AZ_HEAD + "2023-11-16 18:15:46.6805900,374,44\n")
    (d / "afile").write_text("not a directory\n")
    (d / "notres").mkdir()
    (d / "notres" / "keep.txt").write_text("precious\n")
    (d / "calib.csv").write_text(CALIB_HEADER)
    (d / "binary.csv").write_bytes(b"\x00\xff\x13" * 50)
    (d / "bad.toml").write_text("name = \n")
    (d / "sweep.toml").write_text(f'base = "{d / "s.toml"}"\n[sweep]\nout = "{d / "sw"}"\n'
                                  '[axes]\n"trace.rate_scale" = [1.0]\n')
    for name, edit in {"k": ("k = 3", "k = 100000"), "seed": ("seed = 3", "seed = -1"),
                       "alpha": ("k = 3", 'k = 3\nacceptance = { kind = "fixed", use_trace_alpha = true }'),
                       "outfile": ('dir = "{out}"', f'dir = "{d / "afile" / "out"}"'),
                       "key": ("seed = 3", "seed = 3\ncolour = 1"),
                       "kv": ("[[scheduler]]", '[engine]\nkv_capacity_tokens = 30\n[[scheduler]]'),
                       "profile": (FIXED, '"h999-nothing"'),
                       "tracefile": ('path = "{trace}"', f'path = "{d / "afile"}"')}.items():
        write_scenario(d / f"{name}.toml", trace, d / "out", SCENARIO.replace(*edit))
    write_trace(d / "huge.parquet", n=2, output_tokens=[5, 10**12])
    write_trace(d / "longprompt.parquet", n=2, prompt_tokens=[10, 10_000_000])
    for name in ("huge", "longprompt"):
        write_scenario(d / f"{name}.toml", d / f"{name}.parquet", d / "out")
    return d


# (arguments, what the one line must name). {d} is the working folder. Each was typed by hand in a terminal
# (`script -qec "python -m lapsbench ..." /dev/null`) and, before the fix, ended in a traceback, exit 1 or
# 134, or ran on silently.
MISTYPED = [
    (["--foo"], "No such option: --foo"),
    (["run"], "Missing argument"),
    (["bogus"], "No such command 'bogus'"),
    (["run", "{d}/s.toml", "--seed", "abc"], "'--seed'"),
    (["run", "{d}/s.toml", "--seed", "-1"], "'--seed'"),
    (["run", "{d}/s.toml", "--quiet", "true"], "unexpected extra argument"),
    (["run", "{d}/s.toml", "--bogus"], "No such option: --bogus"),
    (["run", "{d}/s.toml", "--seed", "1.5"], "'--seed'"),
    (["run", "{d}/s.toml", "-q"], "No such option: -q"),
    (["compare", "{d}/s.toml", "--baseline", "nope"], "--baseline: 'nope'"),
    (["run", "{d}/missing.toml"], "no such scenario file"),
    (["run", "{d}/bad.toml"], "invalid TOML"),
    (["run", "{d}/s.toml", "--out", "{d}/afile/out"], "afile is a file, not a directory"),
    (["run", "{d}/s.toml", "--out", "{d}/afile"], "is a file — expected a directory"),
    (["run", "{d}/s.toml", "--out", "{d}/notres"], "without meta.json"),
    (["run", "{d}/outfile.toml"], "output.dir"),
    (["run", "{d}/k.toml"], "speculation.k: 100000"),
    (["run", "{d}/seed.toml"], "seed: -1"),
    (["run", "{d}/alpha.toml"], "use_trace_alpha"),
    (["run", "{d}/key.toml"], "colour: unknown key"),
    (["run", "{d}/kv.toml"], "engine.kv_capacity_tokens"),
    (["run", "{d}/profile.toml"], "h999-nothing"),
    (["run", "{d}/tracefile.toml"], "not a readable Parquet file"),
    (["run", "{d}/huge.toml"], "'output_tokens', row 1: 1000000000000"),
    (["run", "{d}/longprompt.toml"], "'prompt_tokens', row 1: 10000000"),
    (["compare", "{d}/s.toml", "--rates", "fast"], "--rates: 'fast'"),
    (["compare", "{d}/s.toml", "--replications", "0"], "'--replications'"),
    (["compare", "{d}/s.toml", "--out", "{d}/afile"], "is a file — expected a directory"),
    (["compare", "{d}/notres"], "notres"),
    (["compare", "{d}/s.toml", "{d}/notres"], "not both"),
    (["sweep", "{d}/missing.toml"], "missing.toml"),
    (["sweep", "{d}/sweep.toml", "--workers", "0"], "'--workers'"),
    (["sweep", "{d}/sweep.toml", "--out", "{d}/afile/sw"], "afile is a file, not a directory"),
    (["trace", "synth", "--requests", "5", "--rate", "1"], "Missing option '--out'"),
    (["trace", "synth", "-n", "5", "--rate", "fast", "--out", "{d}/x.parquet"], "'--rate'"),
    (["trace", "synth", "-n", "5", "--rate", "1", "--seed", "-1", "--out", "{d}/x.parquet"], "'--seed'"),
    (["trace", "synth", "-n", "0", "--rate", "1", "--out", "{d}/x.parquet"], "'--requests'"),
    (["trace", "synth", "-n", "5", "--rate", "1", "--out", "{d}"], "is a directory — expected a file path"),
    (["trace", "synth", "-n", "5", "--rate", "1", "--out", "{d}/afile/x.parquet"], "afile is a file"),
    (["trace", "synth", "-n", "5", "--rate", "1", "--arrival", "bursty", "--out", "{d}/x.parquet"], "bursty"),
    (["trace", "synth", "-n", "5", "--rate", "1", "--output-lengths", "huge", "--out", "{d}/x.parquet"], "huge"),
    (["trace", "import", "{d}/short.csv", "--out", "{d}/x.parquet"], "line 3"),
    (["trace", "import", "{d}/binary.csv", "--out", "{d}/x.parquet"], "binary data"),
    (["trace", "import", "{d}/missing.csv", "--out", "{d}/x.parquet"], "no such file"),
    (["trace", "import", "{d}/good.csv", "--out", "{d}"], "is a directory — expected a file path"),
    (["trace", "import", "{d}/good.csv", "--out", "{d}/good.csv"], "other than the input"),
    (["trace", "import", "{d}/good.csv", "--format", "nope", "--out", "{d}/x.parquet"], "--format: 'nope'"),
    (["trace", "import", "{d}/good.csv", "--seed", "-1", "--out", "{d}/x.parquet"], "'--seed'"),
    (["trace", "slice", "{d}/t.parquet", "--first", "-3", "--out", "{d}/x.parquet"], "--first: -3"),
    (["trace", "slice", "{d}/t.parquet", "--rate-scale", "0", "--out", "{d}/x.parquet"], "--rate-scale: 0.0"),
    (["trace", "slice", "{d}/t.parquet", "--start-s", "1e9", "--out", "{d}/x.parquet"], "--start-s, --duration-s"),
    (["trace", "slice", "{d}/t.parquet", "--sample", "2", "--sample-fraction", "0.5", "--out", "{d}/x.parquet"],
     "--sample and --sample-fraction"),
    (["trace", "slice", "{d}/t.parquet", "--out", "{d}/t.parquet"], "other than the input"),
    (["trace", "info", "{d}/missing.parquet"], "no such trace file"),
    (["trace", "info", "{d}/afile"], "not a readable Parquet file"),
    (["trace", "info"], "Missing argument"),
    (["calibrate", "fit", "{d}/calib.csv", "--out", "{d}/p.toml"], "no measured rows"),
    (["calibrate", "fit", "{d}/calib.csv", "--out", "{d}/p.toml", "--seed", "-1"], "'--seed'"),
    (["calibrate", "fit", "{d}/calib.csv", "--out", "{d}/afile/p.toml"], "afile is a file"),
    (["calibrate", "check", "{d}/missing.toml", "{d}/calib.csv"], "missing.toml"),
    (["calibrate", "measure", "--model", "nope", "--out", "{d}/m.csv"], "unknown model 'nope'"),
]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("args", "needle"), MISTYPED, ids=[" ".join(a) for a, _ in MISTYPED])
def test_mistyped_input_is_one_line_exit_2_and_writes_nothing(d: Path, args: list[str], needle: str) -> None:
    before = _listing(d)
    code, _, err = cli(*(a.format(d=d) for a in args))
    assert_one_line_error(code, err, needle)
    assert _listing(d) == before


@needs_sys
@pytest.mark.parametrize("args", [
    ["run", "{d}/s.toml", "--out", UNWRITABLE + "/out"],
    ["trace", "synth", "-n", "5", "--rate", "1", "--out", UNWRITABLE + "/x.parquet"],
    ["trace", "import", "{d}/good.csv", "--out", UNWRITABLE + "/x.parquet"],
    ["calibrate", "fit", "{d}/calib.csv", "--out", UNWRITABLE + "/p.toml"],
])
def test_unwritable_output_is_refused_before_work(d: Path, args: list[str]) -> None:
    code, _, err = cli(*(a.format(d=d) for a in args))
    assert_one_line_error(code, err, "cannot write in /sys")


def test_help_version_and_bare_groups(d: Path) -> None:
    code, out, err = cli("--version")
    assert (code, out.strip(), err) == (0, f"lapsbench {__version__}", "")
    for args in (["-h"], ["--help"], ["run", "-h"], ["trace", "slice", "-h"], ["calibrate", "fit", "--help"]):
        code, out, err = cli(*args)
        assert code == 0 and out.startswith("Usage: lapsbench") and err == "", args
    for group in (["trace"], ["calibrate"]):  # a group without a command: its help, then one line
        code, out, err = cli(*group)
        assert "Commands:" in out
        assert_one_line_error(code, err, "missing command")


def _command_paths() -> list[list[str]]:
    """Every command and group of the CLI, as argument lists."""
    import typer

    from lapsbench.cli import app

    paths = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_help_has_no_bool_metavars_and_no_eaten_markup() -> None:
    """Flags show no `<bool>` (it invited `--quiet true`); `[output] dir` is not swallowed as markup."""
    paths = _command_paths()
    assert len(paths) >= 10 and ["trace", "synth"] in paths
    for path in paths:
        code, out, _ = cli(*path, "--help")
        assert code == 0 and "<bool>" not in out and "(default:  " not in out, (path, out)
    code, out, _ = cli("run", "--help")
    assert "(default: the scenario's output.dir)" in " ".join(out.split())


def test_rerun_says_it_replaces_and_quiet_keeps_silent(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path / "s.toml", write_trace(tmp_path / "t.parquet"), tmp_path / "out")
    code, _, err = cli("run", scenario)
    assert code == 0 and "replacing" not in err
    code, _, err = cli("run", scenario)
    assert code == 0 and f"replacing the earlier results in {tmp_path / 'out'}/" in err
    code, _, err = cli("run", scenario, "--quiet")
    assert code == 0 and err == ""


def test_out_dot_never_deletes_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out .` (or any folder that holds something other than results) is refused, not replaced."""
    scenario = write_scenario(tmp_path / "s.toml", write_trace(tmp_path / "t.parquet"), tmp_path / "out")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("run", scenario, "--out", ".")
    assert_one_line_error(code, err, "without meta.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml", "t.parquet"]


def test_output_blocked_is_refused_before_the_simulation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check comes before the run: the engine is never entered (issue: the results were lost after it)."""
    import lapsbench.run.runner

    scenario = write_scenario(tmp_path / "s.toml", write_trace(tmp_path / "t.parquet"), tmp_path / "out")
    (tmp_path / "blocker").write_text("")
    monkeypatch.setattr(lapsbench.run.runner, "run_scenario", lambda *a, **k: pytest.fail("simulated"))
    code, _, err = cli("run", scenario, "--out", tmp_path / "blocker" / "out")
    assert_one_line_error(code, err, "--out", "blocker is a file")


def test_summary_requests_is_the_request_count(tmp_path: Path) -> None:
    """summary.csv's `requests` was requests × replications (4335 where the table said 1445)."""
    body = SCENARIO.replace("seed = 3", "seed = 3\nreplications = 3")
    scenario = write_scenario(tmp_path / "s.toml", write_trace(tmp_path / "t.parquet", n=12), tmp_path / "out",
                              body)
    code, out, _ = cli("run", scenario, "--quiet")
    assert code == 0 and "12 requests × 3 replication(s)" in out
    summary = pl.read_csv(tmp_path / "out" / "summary.csv")
    assert summary["requests"].to_list() == [12] and summary["requests_total"].to_list() == [36]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["schedulers"][0]["requests"] == 12


def test_step_table_bounded_by_memory_before_allocating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Token counts within the per-request bound can still add up to more steps than memory holds: refused
    with one line before the step table is built (it died allocating 3.15 TiB)."""
    import lapsbench.run.assembly

    monkeypatch.setattr(lapsbench.run.assembly, "physical_memory_bytes", lambda: 1 << 20)  # a 1 MiB machine
    trace = write_trace(tmp_path / "t.parquet", n=3, output_tokens=[40_000, 40_000, 40_000])
    code, _, err = cli("run", write_scenario(tmp_path / "s.toml", trace, tmp_path / "out"), "--quiet")
    assert_one_line_error(code, err, "120,000 output tokens", "GiB of steps", "trace.max_requests")
    assert not (tmp_path / "out").exists()


def test_prompt_beyond_kv_capacity_refused_at_batch_size_1(tmp_path: Path) -> None:
    """A 200k-token prompt cannot be held by an H100 serving Llama-2-7B (114,528 KV tokens), batched or not."""
    trace = write_trace(tmp_path / "t.parquet", n=2, prompt_tokens=[10, 200_000])
    body = SCENARIO.replace(FIXED, '"h100-llama2-7b"')
    scenario = write_scenario(tmp_path / "s.toml", trace, tmp_path / "out", body)
    code, _, err = cli("run", scenario, "--quiet")
    assert_one_line_error(code, err, "request 1", "prompt 200,000", "114,528")
    assert not (tmp_path / "out").exists()


def test_short_csv_row_never_aborts_at_exit(d: Path) -> None:
    """`trace import` of a CSV with a short row printed the right line, then exited 134 ("terminate called
    without an active exception") in 5 of 10 runs: a Python invalid_row_handler in pyarrow's CSV reader."""
    runs = [start_lapsbench("trace", "import", d / "short.csv", "--out", d / f"x{i}.parquet") for i in range(10)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in runs]
    assert [code for code, _ in results] == [2] * 10, results
    for _, err in results:
        assert_one_line_error(2, err, "short.csv: line 3", "has 2 fields — expected 3")
    assert not list(d.glob("x*.parquet"))


def test_usage_errors_in_a_real_process_without_click_import(d: Path) -> None:
    """The installed entry point: usage errors were 40-60-line double tracebacks with exit 1, because the
    handler imported click (typer 0.29 vendors its own; the ray extra hid it)."""
    runs = [start_lapsbench(*args) for args in (["--foo"], ["-h"], ["--version"], ["run"],
                                           ["trace", "synth", "--requests", "5", "--rate", "1"])]
    (foo, help_, version, missing, synth) = [(p.wait(timeout=120), *p.communicate()) for p in runs]
    assert help_[0] == 0 and "Usage: lapsbench" in help_[1]
    assert version[0] == 0 and version[1].strip() == f"lapsbench {__version__}"
    for code, _, err in (foo, missing, synth):
        assert_one_line_error(code, err)
    src = (REPO / "lapsbench" / "cli.py").read_text()
    assert "import click" not in src and "from click" not in src


def test_pseudo_terminal_usage_error_is_one_line(d: Path) -> None:
    """In a real terminal too (rich and typer change their output there)."""
    import shutil

    if shutil.which("script") is None:
        pytest.skip("needs util-linux script")
    cmd = f"{sys.executable} -m lapsbench run {d / 's.toml'} --quiet true"
    r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, cwd=REPO, timeout=120)
    lines = [line for line in r.stdout.replace("\r", "").splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "unexpected extra argument" in lines[0], r.stdout


def test_no_partial_output_after_the_mistyped_inputs(d: Path) -> None:
    assert_no_partial_output(d)
