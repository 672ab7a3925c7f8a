"""Scheduler modules compile on first use (lapsbench.schedulers.jit): parsing a scenario imports no numba, and a
deferred function behaves as its numba dispatcher from Python and from compiled code."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from numba import njit

from lapsbench.schedulers import jit
from lapsbench.schedulers.laps_sd import acceptance_so_far


def test_parsing_every_shipped_scenario_imports_no_numba():
    code = textwrap.dedent("""
        import sys
        from lapsbench.config.scenario import load_scenario
        from lapsbench.resources import SCENARIOS_DIR
        paths = sorted(p for p in SCENARIOS_DIR.rglob("*.toml") if "sweeps" not in p.parts)
        for path in paths:
            load_scenario(str(path))
        heavy = sorted(m for m in ("numba", "llvmlite", "polars", "pyarrow") if m in sys.modules)
        print(len(paths), heavy)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, heavy = done.stdout.split(" ", 1)
    assert int(count) >= 10
    assert heavy.strip() == "[]", heavy


@jit.njit(cache=False)
def _deferred_twice(x):
    return 2 * x


@njit
def _calls_deferred(x):
    return _deferred_twice(x) + acceptance_so_far(5, 2, 4)


def test_deferred_function_runs_from_python_and_from_compiled_code():
    assert isinstance(_deferred_twice, jit.Deferred)
    assert _deferred_twice(3) == 6
    # acceptance_so_far: (5 - 1 - 2) accepted of 4 drafted
    assert _calls_deferred(np.int64(3)) == 6.5
    assert _deferred_twice.dispatcher.py_func is _deferred_twice.py_func
    assert _deferred_twice.__name__ == "_deferred_twice" and "deferred njit" in repr(_deferred_twice)
