"""What an engine run is given: the frozen run context, the batching configuration, the per-step record an
executor runs (replay), and the result columns an engine fills.

The requests themselves (arrival, prompt, output) and their progress are a `lapsbench.schedulers.api
.RequestView`, shared with the scheduler; the run context (draft length, cost, step table, batching, the
acceptance process for oracles) is built once per run and never changes; `Results` are written by the engine
only. Nothing here imports numba."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from lapsbench.engine.steptable import StepTable
from lapsbench.models.cost import CostModel


@dataclass(frozen=True)
class BatchConfig:
    """The batched engine's settings (docs/batching.md); mode "static", "dynamic" or "continuous"."""

    mode: str = "continuous"
    max_batch: int = 64
    max_batch_tokens: int = 8192
    kv_capacity_tokens: float = np.inf   # inf = unlimited
    preemption: str = "swap"             # or "recompute"
    block_size: int = 16
    admission: str = "guarded"     # continuous: when a waiting request may displace a resident (docs/batching.md §3)
    admission_share: float = 0.05  # guarded: largest displacement cost, as a share of its gain


@dataclass(frozen=True)
class RunContext:
    """The frozen settings of one run: speculation `k`, the cost model, the replication's step table (every
    request's batch-1 steps: tokens and, at batch 1, their time), the batching configuration (None = batch
    size 1), the acceptance process (oracle schedulers and adaptive K read it) and the packed
    `[speculation] adaptive` choice (lapsbench.models.kchoice.AdaptivePack; None: the fixed k every step)."""

    k: int
    cost: CostModel
    table: StepTable
    batching: BatchConfig | None = None
    acceptance: Any = None
    adaptive: Any = None


class Results(NamedTuple):
    """What only the engine writes, per request (index = arrival order)."""

    first_token_s: np.ndarray  # float64, NaN until the first token
    finish_s: np.ndarray       # float64, NaN until done
    preemptions: np.ndarray    # int64: times the request lost the server (or its KV) before finishing
    preempted_s: np.ndarray    # float64: time charged for swap / recompute

    @classmethod
    def empty(cls, n: int) -> Results:
        return cls(np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, np.int64), np.zeros(n, np.float64))


@dataclass(frozen=True)
class BatchStep:
    """One engine step as an executor runs it (lapsbench.replay): the decoding requests, their cached tokens
    before the step and the tokens each keeps; the prefilling requests, their chunk, the tokens already
    cached for them and whether the chunk ends their prefill (emitting a token); `resident` marks the
    requests allowed to hold KV (the others' KV is dropped first)."""

    k: int
    decode: np.ndarray
    context: np.ndarray
    emitted: np.ndarray
    prefill: np.ndarray
    chunk: np.ndarray
    cached: np.ndarray
    completes: np.ndarray
    resident: np.ndarray


class StepExecutor(Protocol):
    """Runs steps for real and owns the clock (lapsbench.replay). Times are the engine's seconds."""

    def step(self, step: BatchStep, start: float, price: float) -> tuple[float, float]:
        """Execute `step`, decided at `start`, which the cost model prices at `price`; returns its end and
        its duration."""
        ...

    def wait_until(self, t: float) -> float:
        """Idle until `t` (the next arrival); returns the time it woke."""
        ...
