"""Run the CLI in-process (`lapsbench.cli.main`, as the console script does) or, for the few tests about the
process itself, as a real process; check the contract for bad input (exit 2, exactly one line on stderr, no
traceback, nothing half-written); write the small traces and scenarios the command-line tests run."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import polars as pl

from lapsbench.cli import main

from conftest import REPO, write_canonical_trace

FIXED = '{ kind = "fixed", step_s = 0.01, draft_step_s = 0.002, prefill_s_per_token = 0.0001 }'

SCENARIO = """name = "t"
seed = 3
[trace]
path = "{trace}"
[model]
profile = """ + FIXED + """
[speculation]
k = 3
[[scheduler]]
name = "fcfs"
[output]
dir = "{out}"
"""


def cli(*args: str | Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one in-process command. An exception that main() lets through
    propagates to the test: that is the traceback a user would see."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    argv = ["lapsbench", *map(str, args)]  # as the console script sees it (meta.json records the command)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), mock.patch.object(sys, "argv", argv):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def _inside(cwd: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(before)


def lapsbench(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`lapsbench ARGS` run in-process from `cwd` (default: the checkout, where shipped relative paths resolve),
    read like a finished process. A process costs ~1 s of imports and compiled-code loading; the tests that are
    about the process itself (exit at shutdown, a terminal, the console script) use `real_lapsbench`."""
    with _inside(cwd or REPO):
        code, out, err = cli(*args)
    return subprocess.CompletedProcess(["lapsbench", *map(str, args)], code, out, err)


def start_lapsbench(*args: str | Path, cwd: Path | None = None, **popen: object) -> subprocess.Popen[str]:
    """`python -m lapsbench ARGS` started as a real process, this checkout's package first on its path (and
    its workers'); text pipes for stdout and stderr unless `popen` says otherwise."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen([sys.executable, "-m", "lapsbench", *map(str, args)], cwd=cwd or REPO, env=env,
                            **popen)  # type: ignore[call-overload]


def real_lapsbench(*args: str | Path, cwd: Path | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m lapsbench ARGS` run to its end as a real process."""
    proc = start_lapsbench(*args, cwd=cwd)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_one_line_error(code: int, stderr: str, *needles: str) -> str:
    """Exit 2 with exactly one line on stderr, `lapsbench: error: ...`, that names every needle; never a
    traceback. Returns the line."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, stderr)
    assert lines[0].startswith("lapsbench: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_exit_2(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """`assert_one_line_error` of a finished command."""
    return assert_one_line_error(res.returncode, res.stderr, *needles)


def assert_no_partial_output(root: Path) -> None:
    """Nothing half-written under `root`: no temporary file or directory of an atomic write, and every
    results directory is complete (meta.json written last, and only by a finished write)."""
    for p in root.rglob("*"):
        assert not p.name.endswith(".tmp"), p
        if p.name == "requests.parquet":
            assert (p.parent / "meta.json").is_file(), p


def write_trace(path: Path, n: int = 12, seed: int = 0, **columns: object) -> Path:
    """A tiny canonical trace (short outputs: every run takes milliseconds once compiled)."""
    g = np.random.default_rng(seed)
    pl.DataFrame({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_s": np.cumsum(g.exponential(0.5, n)),
        "prompt_tokens": g.integers(4, 32, n),
        "output_tokens": g.integers(1, 12, n),
        **columns,
    }).write_parquet(path)
    return path


def write_scenario(path: Path, trace: Path, out: Path, body: str = SCENARIO) -> Path:
    """`body` (SCENARIO: one fcfs run at k = 3 on the fixed profile) with its trace and output paths filled in."""
    path.write_text(body.replace("{trace}", str(trace)).replace("{out}", str(out)))
    return path


def write_small_scenario(tmp: Path, schedulers: list[tuple[str, str]], replications: int = 1, k: int = 2,
                         n: int = 60, rate: float = 2.0, rate_scale: float = 0.05, name: str = "cmp",
                         trace_seed: int = 0) -> Path:
    """`tmp/NAME.toml`: a scenario on a tiny trace, fixed 10 ms steps, k draft tokens at α = 0.6 (random
    acceptance, so replications differ), results under `tmp/out`; schedulers as (name, label) pairs."""
    trace = write_canonical_trace(tmp / f"trace{trace_seed}.parquet", n=n, seed=trace_seed, rate=rate)
    lines = [f'name = "{name}"', "seed = 7", f"replications = {replications}", "",
             "[trace]", f'path = "{trace}"', f"rate_scale = {rate_scale}", "",
             "[model]", 'profile = { kind = "fixed", step_s = 0.01 }', "",
             "[speculation]", f"k = {k}", 'acceptance = { kind = "fixed", alpha = 0.6 }', "",
             "[slo]", "ttft_s = 0.5", "e2e_s = 3.0", "",
             "[output]", f'dir = "{tmp / "out"}"', ""]
    for sched, label in schedulers:
        lines += ["[[scheduler]]", f'name = "{sched}"', f'label = "{label}"', ""]
    path = tmp / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path
