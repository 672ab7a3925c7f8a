"""Run the CLI in-process (`lapsbench.cli.main`, as the console script does) and check the contract for bad
input: exit 2, exactly one line on stderr, no traceback, nothing half-written."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import polars as pl

from lapsbench.cli import main

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


def assert_one_line_error(code: int, stderr: str, *needles: str) -> None:
    """Exit 2 with exactly one line on stderr that names every needle; never a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, stderr)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


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
    path.write_text(body.replace("{trace}", str(trace)).replace("{out}", str(out)))
    return path
