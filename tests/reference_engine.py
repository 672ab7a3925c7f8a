"""The step-by-step batch-1 reference: the replay loop (lapsbench.replay.loop.replay_single: one step at a
time, plain Python, everyone re-ranked before every step) run with the executor that runs nothing.

It shares with the compiled engine only the policy and the step table (each request's tokens and nanoseconds
per step, checked on its own in tests/test_steptable.py), so agreement checks the compiled loop's cached keys,
runner-up shortcut and bookkeeping — and, the two being one definition, that replaying a scenario through
`SimulatedExecutor` reproduces `lapsbench run`."""

from __future__ import annotations

from lapsbench.replay.loop import SimulatedExecutor, replay_single
from lapsbench.state import EngineState

from conftest import table_for


def reference_simulate(state: EngineState, policy, acceptance) -> EngineState:
    executor = SimulatedExecutor()
    executor.begin(state, policy.name, 0, unit_ns=True)
    policy.prepare(state)
    return replay_single(state, policy, table_for(state, acceptance), executor)
