"""Progress at no cost: the compiled loops run in one call while the calling thread polls their finished
count (lapsbench/progress.py). Results are identical with and without a callback, the callback sees
increasing counts ending at n, Ctrl-C stops the loop, the Python engines are throttled, and the compile
notice appears only when numba compiles — checked in a pseudo-terminal as a user sees it."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lapsbench import progress as lp
from lapsbench.config.scenario import parse_scenario
from lapsbench.engine.context import BatchConfig
from lapsbench.engine.executor import SimulatedExecutor, replay_single
from lapsbench.models.cost import fixed_profile
from lapsbench.run.runner import run_scenario
from lapsbench.schedulers import make_policy

from conftest import REPO, create_acceptance, create_state, simulate, table_for, write_canonical_trace

ENGINES = {"batch 1": {}, "continuous": {"batching": "continuous", "max_batch": 16}}
N = {"batch 1": 20_000, "continuous": 4_000}  # a few tens of ms of compiled loop: several polls at POLL_S = 0
RATE = {"batch 1": 1.0, "continuous": 12.0}     # requests/s: load ~0.8 (mean service ~0.77 s, 16 per batch)


def scenario(trace: Path, engine: dict, out: Path):
    return parse_scenario({
        "name": "p", "seed": 5, "replications": 2, "trace": {"path": str(trace)},
        "model": {"profile": {"kind": "fixed", "step_s": 0.01, "draft_step_s": 0.002, "prefill_s_per_token": 1e-4}},
        "speculation": {"k": 3, "acceptance": {"kind": "fixed", "alpha": 0.6}},
        "engine": engine, "scheduler": [{"name": "fcfs"}, {"name": "las"}], "output": {"dir": str(out)},
    })


@pytest.mark.parametrize("engine", ENGINES)
def test_results_identical_with_and_without_progress(engine: str, tmp_path: Path, monkeypatch):
    """The same requests frame bit for bit; per (scheduler, replication) strictly increasing counts that end
    at n, with counts from inside the run (the loop publishes its count as it goes, not only at the end);
    a do-nothing callback costs no measurable time (a generous bound: before, each report cost ~0.1 s)."""
    n = N[engine]
    spec = scenario(write_canonical_trace(tmp_path / "t.parquet", n=n, rate=RATE[engine]), ENGINES[engine],
                    tmp_path / "out")
    plain = run_scenario(spec)
    timed = run_scenario(spec, lambda label, rep, done, total: None)
    assert timed.wall_s <= 2 * plain.wall_s + 1.0, (timed.wall_s, plain.wall_s)
    monkeypatch.setattr(lp, "POLL_S", 0.0)
    calls: dict[tuple[str, int], list[int]] = {}
    with_progress = run_scenario(spec, lambda label, rep, done, total: calls.setdefault((label, rep), []).append(done))
    for result in (timed, with_progress):
        assert result.requests.equals(plain.requests)
        assert result.engine_stats.equals(plain.engine_stats)
    assert sorted(calls) == [(label, rep) for label in ("fcfs", "las") for rep in (0, 1)]
    for counts in calls.values():
        assert counts == sorted(set(counts)) and counts[-1] == n, counts[:5]
    assert any(0 < c < n for counts in calls.values() for c in counts)


def big_run(engine: str):
    """A state, policy and runner for a run of a few tens of ms on the compiled loop."""
    n = N[engine]
    g = np.random.default_rng(1)
    state = create_state(np.cumsum(g.exponential(1 / RATE[engine], n)), g.integers(1, 200, n),
                         g.integers(16, 512, n), k=3, cost=fixed_profile(0.01, 0.002))
    acceptance = create_acceptance(state, 0.6)
    table = table_for(state, acceptance)
    policy = make_policy("las")
    if engine == "batch 1":
        return state, lambda progress: simulate(state, policy, acceptance, progress, table=table)
    return state, lambda progress: simulate(state, policy, acceptance, progress, table=table,
                                            batching=BatchConfig(max_batch=16))


@pytest.mark.parametrize("engine", ENGINES)
def test_ctrl_c_stops_the_compiled_loop(engine: str, monkeypatch):
    """A KeyboardInterrupt in the polling thread sets the loop's stop flag: it propagates after the loop has
    returned early, and no engine thread is left running."""
    monkeypatch.setattr(lp, "POLL_S", 0.0)
    state, run = big_run(engine)

    def interrupt(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(interrupt)
    assert 0 <= state.done.sum() < state.n
    assert not [t for t in threading.enumerate() if t.name == "lapsbench-engine"]


def test_engine_errors_reach_the_caller():
    """An exception in the worker thread is raised in the caller."""
    class Broken:
        def compile(self, sig) -> None:
            pass

        def __call__(self, *args) -> None:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        lp.run_polled(Broken(), (np.zeros(2, np.int64),), np.zeros(2, np.int64), 0, 1, None)


def test_replay_progress_is_throttled():
    """Python loops (the replay's) report through Throttled: a new count at most every POLL_S seconds, the last
    one (n) always and once; results unchanged."""
    calls: list[int] = []
    report = lp.Throttled(calls.append, 100_000, interval=0.05)
    start = time.monotonic()
    for done in range(1, 100_001):
        report(done)
    report(100_000)
    assert calls[-1] == 100_000 and calls == sorted(set(calls))
    assert len(calls) <= (time.monotonic() - start) / 0.05 + 2
    output = np.random.default_rng(2).integers(1, 50, 300)
    runs = []
    for progress in (None, calls.append):
        calls.clear()
        state = create_state(np.arange(300.0), output, k=2, cost=fixed_profile(0.01, 0.002))
        policy, acceptance = make_policy("las"), create_acceptance(state, 0.6)
        executor = SimulatedExecutor()
        executor.begin(state, "las", 0, unit_ns=True)
        replay_single(state, policy, table_for(state, acceptance), executor,
                      lp.Throttled(progress, state.n) if progress else None)
        runs.append(state)
    assert calls[-1] == 300 and calls == sorted(set(calls))
    assert np.array_equal(runs[0].finish_s, runs[1].finish_s)


def test_compile_notice_only_on_a_cache_miss(tmp_path: Path):
    """on_compile reports a compilation (cold cache), and nothing when numba loads from its cache; with
    `loads` (the replay's clock) it reports the load too, once per signature."""
    (tmp_path / "jitted.py").write_text("from numba import njit\n\n@njit(cache=True)\ndef f(x):\n    return x + 1\n")
    script = textwrap.dedent("""
        import sys
        import jitted
        from lapsbench.progress import on_compile
        events = []
        with on_compile(events.append, loads=sys.argv[1] == "loads"):
            jitted.f(1)
            jitted.f(2)
        print(events)
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    runs = [subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, env=env,
                           timeout=120) for mode in ("compiles", "compiles", "loads")]
    assert [r.stdout.strip() for r in runs] == ["[True, False]", "[]", "[True, False]"], [r.stderr for r in runs]


# ------------------------------------------------------------------------------------ as a user, in a terminal
def in_terminal(args: list[str], env: dict[str, str], interrupt_on: bytes | None = None,
                timeout: float = 300) -> tuple[int, str]:
    """Run `python -m lapsbench ARGS` with a pseudo-terminal as stdin/stdout/stderr; if `interrupt_on`
    appears in its output, send SIGINT to its process group (Ctrl-C). Returns (exit code, output)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lapsbench", *args], stdin=terminal, stdout=terminal,
                            stderr=terminal, cwd=REPO, env={**env, "TERM": "xterm-256color"}, start_new_session=True)
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + timeout
    interrupted = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process has exited
                break
            if not chunk:
                break
            output += chunk
        if interrupt_on is not None and not interrupted and interrupt_on in output:
            os.killpg(proc.pid, signal.SIGINT)
            interrupted = True
        if not ready and proc.poll() is not None:
            break
    code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    os.close(controller)
    return code, output.decode(errors="replace")


def write_cli_scenario(tmp_path: Path, n: int) -> Path:
    trace = write_canonical_trace(tmp_path / "trace.parquet", n=n, rate=1.0)
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(f"""
        name = "t"
        seed = 3
        replications = 3
        [trace]
        path = "{trace}"
        [model]
        profile = {{ kind = "fixed", step_s = 0.01, draft_step_s = 0.002, prefill_s_per_token = 0.0001 }}
        [speculation]
        k = 3
        acceptance = {{ kind = "fixed", alpha = 0.6 }}
        [[scheduler]]
        name = "fcfs"
        [[scheduler]]
        name = "las"
        [output]
        dir = "{tmp_path / 'out'}"
    """))
    return path


def test_terminal_run_shows_bars_and_ctrl_c_is_clean(tmp_path: Path):
    """In a terminal: the bar renders, no compile notice on a warm cache; Ctrl-C mid-run exits 130 with one
    line, no traceback and no results directory."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    (tmp_path / "small").mkdir()
    small = write_cli_scenario(tmp_path / "small", 200)  # the same engines: warms numba's cache if it is cold
    warm = subprocess.run([sys.executable, "-m", "lapsbench", "run", str(small)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)
    assert warm.returncode == 0, warm.stderr
    assert "compiling" not in warm.stderr  # not a terminal: no notice
    path = write_cli_scenario(tmp_path, 100_000)
    code, output = in_terminal(["run", str(path)], env, interrupt_on=b"(rep 0)")
    assert code == 130, output[-2000:]
    assert "lapsbench: interrupted" in output and "Traceback" not in output
    assert "compiling the engines" not in output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_terminal_run_on_a_cold_cache_says_it_compiles(tmp_path: Path):
    """The first run after install (a cold numba cache) shows the compile notice in a terminal, a second
    does not; both finish with the results table."""
    path = write_cli_scenario(tmp_path, 200)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    cold_code, cold = in_terminal(["run", str(path)], env)
    warm_code, warm = in_terminal(["run", str(path)], env)
    assert cold_code == warm_code == 0, (cold[-2000:], warm[-2000:])
    assert "compiling the engines (first run after install, ~30 s)" in cold
    assert "compiling the engines" not in warm
    assert "results in" in warm
