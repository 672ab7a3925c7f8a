"""The batch-1 step simulator: one speculative-decoding server, one request per step.

A request's first step is its prefill (emitting the first token); every later step is `k` draft
forwards plus one verify forward emitting 1..k+1 tokens. Decisions are taken at step boundaries only.

Every step a request will take is known in advance (lapsbench.steptable: at batch size 1 neither its
cost nor its acceptance depends on the schedule), so the engine only decides *when* steps run; the loop
runs compiled (lapsbench/engine_compiled.py) with the scheduler's compiled functions. The clock is integer
nanoseconds: tests/reference_engine.py, one step at a time in Python, gives identical results. Batched
serving lives in lapsbench/batching.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from lapsbench.state import EngineState
from lapsbench.steptable import StepTable, build_step_table


class Acceptance(Protocol):
    def emitted(self, req: np.ndarray, step: np.ndarray, position: np.ndarray) -> np.ndarray: ...


def table_for(state: EngineState, acceptance: Acceptance) -> StepTable:
    return build_step_table(state.request_id, state.prompt_tokens, state.output_tokens, state.k, state.cost,
                            acceptance)


def simulate(state: EngineState, policy: Any, acceptance: Acceptance,
             progress: Callable[[int], None] | None = None, table: StepTable | None = None) -> EngineState:
    """Serve every request of `state` at batch size 1 under the scheduler `policy`; fills the state's result
    arrays. `table` may be shared by every scheduler of a replication (it does not depend on the schedule)."""
    from lapsbench.schedulers.user import code_and_module

    table = table if table is not None else table_for(state, acceptance)
    code, engine = code_and_module(policy, "lapsbench.engine_compiled")
    return engine.run_compiled(state, code, policy.pack(state), policy.preemptive, table, progress)
