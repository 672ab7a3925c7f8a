"""Factories for small engine runs (style: create_* helpers, as in vLLM's tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lapsbench.engine.context import BatchConfig, RunContext  # noqa: E402
from lapsbench.engine.state import EngineState  # noqa: E402
from lapsbench.engine.steptable import StepTable, build_step_table  # noqa: E402
from lapsbench.models import rng  # noqa: E402
from lapsbench.models.acceptance import FixedAcceptance  # noqa: E402
from lapsbench.models.cost import CostModel, fixed_profile  # noqa: E402
from lapsbench.run.runner import serve  # noqa: E402
from lapsbench.schedulers import make_policy  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def create_state(arrival_s, output_tokens, prompt_tokens=None, k: int = 0, cost: CostModel | None = None,
                 request_id=None) -> EngineState:
    arrival_s = np.asarray(arrival_s, np.float64)
    n = arrival_s.size
    return EngineState(
        request_id=np.arange(n, dtype=np.int64) if request_id is None else np.asarray(request_id, np.int64),
        arrival_s=arrival_s,
        prompt_tokens=np.ones(n, np.int64) if prompt_tokens is None else np.asarray(prompt_tokens, np.int64),
        output_tokens=np.asarray(output_tokens, np.int64),
        k=k,
        cost=cost or fixed_profile(1.0),
    )


def create_acceptance(state: EngineState, alpha: float = 0.0, seed: int = 0, replication: int = 0):
    return FixedAcceptance(np.full(state.n, alpha), state.request_id, state.k,
                           rng.stream_key(seed, replication, rng.Streams.ACCEPTANCE))


def table_for(state: EngineState, acceptance) -> StepTable:
    """The step table of `state`'s requests under `acceptance` (what the runner builds per replication)."""
    return build_step_table(state.request_id, state.prompt_tokens, state.output_tokens, state.k, state.cost,
                            acceptance)


def simulate(state: EngineState, policy, acceptance, progress=None, table: StepTable | None = None,
             batching: BatchConfig | None = None, check: bool = False, adaptive=None) -> EngineState:
    """Serve `state` on the package's engine (batch 1, or batched under `batching`) as the runner does: the
    step table and acceptance also handed to oracle policies through the state; `adaptive` the packed
    `[speculation] adaptive` choice (lapsbench.models.kchoice.AdaptivePack; batched only). Returns the state."""
    table = table_for(state, acceptance) if table is None else table
    state.acceptance, state.step_table = acceptance, table
    ctx = RunContext(state.k, state.cost, table, batching, acceptance, adaptive)
    state.engine_stats = serve(state, policy, ctx, progress, check=check)
    return state


def run_policy(name: str, state: EngineState, alpha: float = 0.0, seed: int = 0, **params) -> EngineState:
    return simulate(state, make_policy(name, params), create_acceptance(state, alpha, seed))


def write_canonical_trace(path: Path, n: int = 50, seed: int = 0, rate: float = 2.0) -> Path:
    g = np.random.default_rng(seed)
    pl.DataFrame({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_s": np.cumsum(g.exponential(1 / rate, n)),
        "prompt_tokens": g.integers(16, 512, n),
        "output_tokens": g.integers(1, 200, n),
    }).write_parquet(path)
    return path


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    return write_canonical_trace(tmp_path / "trace.parquet")
