"""Host time of the batch-1 replay's per-step decision (issue #14): the median time `replay_single` spends
between two executor steps (admit, choose, book the step, observe, build the next BatchStep), with the executor
that runs nothing, for fcfs, las, srpt-sd and laps-sd, on this tree and on a git revision (`--before`, default
main) in the same invocation.

Workload: 50 requests arriving at t = 0 with 1,000-token outputs (so about 50 are present throughout), k = 4,
α = 0.7, a fixed-step profile; the first `--steps` steps of each run are timed (after `--warm` untimed ones).

    python benchmarks/bench_replay_decision.py [--before main] [--steps 3000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("fcfs", "las", "srpt-sd", "laps-sd")


class EnoughError(Exception):
    """Ends a run after the timed steps."""


def measure(steps: int, warm: int) -> dict[str, float]:
    """Median µs between executor steps per policy, for the lapsbench importable now."""
    from lapsbench.engine.executor import SimulatedExecutor, replay_single
    from lapsbench.engine.state import EngineState
    from lapsbench.engine.steptable import build_step_table
    from lapsbench.models import rng
    from lapsbench.models.acceptance import FixedAcceptance
    from lapsbench.models.cost import fixed_profile
    from lapsbench.schedulers import make_policy

    class Timed(SimulatedExecutor):
        def __init__(self) -> None:
            super().__init__()
            self.gaps: list[int] = []
            self.left = 0

        def step(self, step, start, price):
            t = time.perf_counter_ns()
            if self.left < steps + warm:
                self.gaps.append(t - self.exit)
            self.left += 1
            if self.left > steps + warm:
                raise EnoughError
            result = super().step(step, start, price)
            self.exit = time.perf_counter_ns()
            return result

    n = 50
    out = {}
    for name in POLICIES:
        state = EngineState(np.arange(n, dtype=np.int64), np.zeros(n), np.full(n, 200, np.int64),
                            np.full(n, 1000, np.int64), 4, fixed_profile(0.01, 0.002))
        acceptance = FixedAcceptance(np.full(n, 0.7), state.request_id, 4,
                                     rng.stream_key(3, 0, rng.Streams.ACCEPTANCE))
        table = build_step_table(state.request_id, state.prompt_tokens, state.output_tokens, state.k, state.cost,
                                 acceptance)
        state.acceptance, state.step_table = acceptance, table
        executor = Timed()
        executor.begin(state, name, 0, unit_ns=True)
        executor.exit = time.perf_counter_ns()
        with contextlib.suppress(EnoughError):
            replay_single(state, make_policy(name), table, executor)
        out[name] = float(np.median(executor.gaps[warm + 1:])) / 1000.0
    return out


def before(rev: str, steps: int, warm: int) -> dict[str, float]:
    """`measure` on the package as of git revision `rev`, in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "lapsbench"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": tmp}
        code = (f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import json; "
                f"import bench_replay_decision as b; print(json.dumps(b.measure({steps}, {warm})))")
        run = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True,
                             cwd=tmp)
        return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="main", help="git revision to compare with (default main)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--warm", type=int, default=200)
    args = ap.parse_args()
    old = before(args.before, args.steps, args.warm)
    new = measure(args.steps, args.warm)
    print(f"median µs between batch-1 replay steps (50 present, SimulatedExecutor; {args.steps} steps)")
    print(f"{'scheduler':<10} {args.before:>10} {'this tree':>10} {'ratio':>7}")
    for name in POLICIES:
        print(f"{name:<10} {old[name]:>10.1f} {new[name]:>10.1f} {old[name] / new[name]:>6.1f}x")


if __name__ == "__main__":
    main()
