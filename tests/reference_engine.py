"""The step-by-step batch-1 reference: the replay loop (lapsbench.engine.executor.replay_single: one step at a
time from Python, everyone re-ranked afresh before every step by one compiled call) run with the executor that
runs nothing.

It shares with the compiled engine only the scheduler's compiled functions (through
lapsbench.schedulers.stepwise) and the step table (each request's tokens and nanoseconds per step, checked on
its own in tests/test_steptable.py), so agreement checks the compiled loop's cached keys, runner-up shortcut and
bookkeeping — and, the two being one definition, that replaying a scenario through `SimulatedExecutor`
reproduces `lapsbench run`."""

from __future__ import annotations

from lapsbench.engine.executor import SimulatedExecutor, replay_single
from lapsbench.engine.state import EngineState
from lapsbench.schedulers.stepwise import Bound

from conftest import table_for


class Run:
    """A finished reference run: its state and the scheduler's packed tuple as it ended (`.P`)."""

    def __init__(self, state: EngineState, bound: Bound) -> None:
        self.state, self.bound, self.P = state, bound, bound.P


def reference_run(state: EngineState, policy, acceptance, table=None) -> Run:
    executor = SimulatedExecutor()
    executor.begin(state, policy.name, 0, unit_ns=True)
    table = table_for(state, acceptance) if table is None else table
    state.acceptance, state.step_table = acceptance, table  # oracle schedulers read the true future from them
    bound = Bound(policy, state)
    replay_single(state, policy, table, executor, bound=bound)
    return Run(state, bound)


def reference_simulate(state: EngineState, policy, acceptance, table=None) -> EngineState:
    """`table`: the step table to replay (default: the fixed-k table of `acceptance`)."""
    return reference_run(state, policy, acceptance, table).state
