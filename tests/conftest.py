"""Factories for small engine runs (style: create_* helpers, as in vLLM's tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lapsbench import rng  # noqa: E402
from lapsbench.acceptance import FixedAcceptance  # noqa: E402
from lapsbench.costmodel import CostModel, fixed_profile  # noqa: E402
from lapsbench.engine import simulate  # noqa: E402
from lapsbench.schedulers import make_policy  # noqa: E402
from lapsbench.state import EngineState  # noqa: E402

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
