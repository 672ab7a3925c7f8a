"""Schedulers written by users (docs/schedulers.md): a scenario names `file.py:Class`; it is validated like
a built-in one, runs compiled on generated engine modules, and equals the built-in it restates bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lapsbench.schedulers.api import empty_view

from cli_helpers import assert_no_partial_output, assert_one_line_error, cli

HEADER = """\
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from lapsbench.schedulers import Scheduler


class NoFields(NamedTuple):
    pass
"""

USER_SJF = HEADER + '''

@dataclass(frozen=True)
class MySJF(Scheduler):
    """The built-in sjf restated: non-preemptive, by true output length."""
    bonus: float = 0.0

    name = "my-sjf"
    preemptive = False
    static_keys = True

    def pack(self, state):
        return NoFields()

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        return R.output_tokens[i]


class MyLASPacked(NamedTuple):
    served_steps: np.ndarray


@dataclass(frozen=True)
class MyLAS(Scheduler):
    """The built-in las restated with an observe of its own: steps counted in the packed tuple."""
    name = "my-las"

    def pack(self, state):
        return MyLASPacked(np.zeros(state.n, np.int64))

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        return (float(P.served_steps[i]),)

    @staticmethod
    @njit(cache=True)
    def observe(P, R, served, m, end):
        for j in range(m):
            P.served_steps[served[j]] += 1
        return False
'''

SCENARIO = """name = "user"
seed = 5
replications = 2
[trace]
synth = {{ requests = 80, rate = 3.0 }}
[model]
profile = {{ kind = "fixed", step_s = 0.01, draft_step_s = 0.002, prefill_s_per_token = 0.0001 }}
[speculation]
k = 3
[engine]
{engine}
{schedulers}
[output]
dir = "{out}"
"""


def write_case(tmp_path: Path, schedulers: list[str], body: str = USER_SJF, engine: str = "") -> Path:
    (tmp_path / "mine.py").write_text(body)
    tables = "\n".join(f"[[scheduler]]\n{s}" for s in schedulers)
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(engine=engine, schedulers=tables, out=tmp_path / "out"))
    return path


def results(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "requests.parquet")


def same_records(df: pl.DataFrame, a: str, b: str) -> None:
    cols = [c for c in df.columns if c not in ("scheduler", "policy")]
    left, right = df.filter(pl.col("scheduler") == a).select(cols), df.filter(pl.col("scheduler") == b).select(cols)
    assert left.height and left.equals(right), (a, b)


@pytest.mark.parametrize("engine", ["batching = \"none\"", pytest.param(
    "batching = \"continuous\"\nmax_batch = 4", marks=pytest.mark.slow)], ids=["batch-1", "continuous"])
def test_user_schedulers_equal_the_builtins_they_restate(tmp_path: Path, engine: str):
    """(continuous: slow, it compiles the batched loop for two user schedulers, ~1 min cold)"""
    path = write_case(tmp_path, ['name = "sjf"', 'name = "mine.py:MySJF"', 'name = "las"',
                                 'name = "mine.py:MyLAS"\nlabel = "mine"'], engine=engine)
    code, _, err = cli("run", path, "--quiet")
    assert code == 0, err
    df = results(tmp_path)
    same_records(df, "sjf", "my-sjf")   # label: the class's name
    same_records(df, "las", "mine")
    assert set(df.filter(pl.col("scheduler") == "mine")["policy"]) == {"my-las"}


BAD = {
    "missing file": ('name = "nope.py:X"', "", ["nope.py", "no such scheduler file"]),
    "import error": ('name = "mine.py:X"', "import nonexistent_module_xyz\n", ["mine.py", "ModuleNotFoundError"]),
    "syntax error": ('name = "mine.py:X"', "def broken(:\n", ["mine.py", "SyntaxError"]),
    "no class": ('name = "mine.py:Missing"', HEADER, ["mine.py", "no class 'Missing'"]),
    "not a scheduler": ('name = "mine.py:NoFields"', HEADER, ["must subclass lapsbench.schedulers.Scheduler"]),
    "missing key": ('name = "mine.py:K"', HEADER + "\nclass K(Scheduler):\n    name = 'k'\n"
                    "    def pack(self, state):\n        return NoFields()\n", ["K has no key(P, R, i)"]),
    "key not compiled": ('name = "mine.py:K"', HEADER + "\nclass K(Scheduler):\n    name = 'k'\n"
                         "    def pack(self, state):\n        return NoFields()\n"
                         "    @staticmethod\n    def key(P, R, i):\n        return 0.0\n",
                         ["K.key must be a @staticmethod compiled with @numba.njit"]),
    "wrong signature": ('name = "mine.py:K"', HEADER + "\nclass K(Scheduler):\n    name = 'k'\n"
                        "    def pack(self, state):\n        return NoFields()\n"
                        "    @staticmethod\n    @njit\n    def key(P, i):\n        return 0.0\n",
                        ["K.key(P, i)", "expected key(P, R, i)"]),
    "wrong return type": ('name = "mine.py:K"', HEADER + "\nclass K(Scheduler):\n    name = 'k'\n"
                          "    def pack(self, state):\n        return NoFields()\n"
                          "    @staticmethod\n    @njit\n    def key(P, R, i):\n        return R.done\n",
                          ["K.key", "must return a number or a tuple of 1 to 3 numbers"]),
    "unknown parameter": ('name = "mine.py:MySJF"\nbonsu = 1.0', USER_SJF, ["bonsu", "unknown parameter",
                                                                           "valid parameters: ['bonus']"]),
    "parameter of the wrong type": ('name = "mine.py:MySJF"\nbonus = "big"', USER_SJF, ["bonus", "wrong type"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_user_scheduler_is_one_line_and_exit_2(tmp_path: Path, case: str):
    table, body, needles = BAD[case]
    path = write_case(tmp_path, [table], body=body)
    code, _, err = cli("run", path, "--quiet")
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()
    assert_no_partial_output(tmp_path)


def test_generated_modules_are_written_once_and_reused(tmp_path: Path):
    """The generated engine copy keeps its file (and modification time: numba's cache key) across loads."""
    from lapsbench.schedulers.base import make_policy
    from lapsbench.schedulers.user import generated_module

    (tmp_path / "mine.py").write_text(USER_SJF)
    policy = make_policy(f"{tmp_path / 'mine.py'}:MySJF")
    module = generated_module("lapsbench.schedulers.stepwise", type(policy))
    path = Path(module.__file__)
    stamp = path.stat().st_mtime_ns
    text = path.read_text()
    assert text.count("from lapsbench.schedulers import dispatch") == 0 and "as dispatch\n" in text
    assert generated_module("lapsbench.schedulers.stepwise", type(policy)) is module
    assert path.stat().st_mtime_ns == stamp
    view = empty_view(np.zeros(3), np.ones(3, np.int64), np.array([5, 2, 9]))
    keys = module.keys_of(0, policy.pack(type("S", (), {"n": 3})()), view, np.arange(3), 0.0, True)
    assert keys[:, 0].tolist() == [5.0, 2.0, 9.0]   # the user's key, through the generated dispatch


@pytest.mark.parametrize("example", ["shortest_predicted", "acceptance_weighted"])
def test_the_shipped_examples_parse_and_compile(example: str):
    """Each example scenario names its scheduler relative to itself; the scheduler packs and compiles."""
    from lapsbench.config.scenario import load_scenario
    from lapsbench.engine.state import EngineState
    from lapsbench.models.cost import fixed_profile
    from lapsbench.schedulers.base import make_policy
    from lapsbench.schedulers.stepwise import Bound
    from lapsbench.schedulers.user import check_user_scheduler

    root = Path(__file__).resolve().parent.parent / "examples" / "schedulers"
    s = load_scenario(root / f"{example}.toml")
    spec = s.scheduler[-1]
    assert spec.name == f"{root / example}.py:{spec.name.rsplit(':', 1)[1]}"
    policy = make_policy(spec.name, spec.params)
    state = EngineState(np.arange(3), np.zeros(3), np.array([10, 10, 10]), np.array([30, 5, 9]), 4,
                        fixed_profile(0.01, 0.002))
    check_user_scheduler(policy, state, "scheduler")
    b = Bound(policy, state)
    state.generated[:], state.decode_steps[:], state.drafted[:] = [9, 1, 1], [2, 0, 0], [8, 0, 0]
    assert b.order(np.arange(3), 0.0)[0] in (1, 2)   # the short ones first, under either example


def test_the_batch1_replay_runs_a_user_scheduler_as_the_compiled_engine(tmp_path: Path):
    """replay_single (its compiled choose_single / serve_single come from the generated copy of
    lapsbench.schedulers.stepwise) with the executor that runs nothing equals the compiled batch-1 engine for a
    user scheduler with an observe and packed state of its own."""
    from lapsbench.schedulers import make_policy

    from conftest import create_acceptance, create_state, simulate
    from reference_engine import reference_simulate

    (tmp_path / "mine.py").write_text(USER_SJF)
    rng = np.random.default_rng(4)
    runs = []
    for engine in (simulate, reference_simulate):
        state = create_state(np.sort(rng.uniform(0, 5, 120)),
                             rng.integers(1, 60, 120), rng.integers(1, 300, 120), k=3)
        policy = make_policy(str(tmp_path / "mine.py") + ":MyLAS")
        runs.append(engine(state, policy, create_acceptance(state, 0.6)))
        rng = np.random.default_rng(4)
    a, b = runs
    assert np.isfinite(a.finish_s).all() and a.preemptions.sum() > 0
    for name in ("finish_s", "first_token_s", "preemptions", "generated", "drafted", "attained_s"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
