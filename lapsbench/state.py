"""Request state as struct-of-arrays, owned by the engine, read by policies and metrics.

One array per field, indexed by request (the workload's arrival order). No per-request objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lapsbench.costmodel import CostModel


@dataclass
class EngineState:
    request_id: np.ndarray
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    k: int
    cost: CostModel
    generated: np.ndarray = field(init=False)       # output tokens produced so far
    steps: np.ndarray = field(init=False)           # forward steps taken part in (prefill steps included)
    decode_steps: np.ndarray = field(init=False)    # speculative (decode) steps taken: the acceptance counter
    drafted: np.ndarray = field(init=False)         # draft tokens proposed so far (the K of each decode step)
    attained_s: np.ndarray = field(init=False)      # GPU time of the steps taken part in
    last_service_s: np.ndarray = field(init=False)  # end of the last step served, or arrival if none
    first_token_s: np.ndarray = field(init=False)
    finish_s: np.ndarray = field(init=False)
    preemptions: np.ndarray = field(init=False)
    preempted_s: np.ndarray = field(init=False)     # time charged for swap / recompute
    done: np.ndarray = field(init=False)
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # optional trace columns (alpha, predictions)
    seed: int = 0         # scenario seed and replication: policies derive their random streams from these
    replication: int = 0  # (rng.stream_key(seed, replication, stream)), shared by every scheduler
    cache: dict[str, np.ndarray] = field(default_factory=dict)  # derived per-request arrays (scheduler helpers)
    acceptance: Any = None  # the replication's acceptance process (set by the runner); oracle policies
    #                         (srpt-sd) read true future draws from it; None in bare engine tests
    step_table: Any = None  # the replication's step table drawn from `acceptance` (lapsbench.steptable), shared
    #                         by every scheduler when the runner sets it; engines and oracles draw their own if None

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        self.generated = np.zeros(n, np.int64)
        self.steps = np.zeros(n, np.int64)
        self.decode_steps = np.zeros(n, np.int64)
        self.drafted = np.zeros(n, np.int64)
        self.attained_s = np.zeros(n, np.float64)
        self.last_service_s = self.arrival_s.astype(np.float64).copy()
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.preemptions = np.zeros(n, np.int64)
        self.preempted_s = np.zeros(n, np.float64)
        self.done = np.zeros(n, bool)

    @property
    def n(self) -> int:
        return len(self.arrival_s)
