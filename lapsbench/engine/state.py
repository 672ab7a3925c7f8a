"""A run's requests as the schedulers' Python side sees them: struct-of-arrays, index = arrival order.

The progress columns are the engine's `RequestView` (`view`) and the result columns its `Results` (`out`);
the attributes below are those same arrays, so an engine writing the view updates the state. The rest (cost,
k, trace columns, seed, the acceptance process and step table for oracles, `cache`) is what a policy derives
its packed tables from (lapsbench.policies)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lapsbench.engine.context import Results
from lapsbench.models.cost import CostModel
from lapsbench.schedulers.api import RequestView, empty_view


@dataclass
class EngineState:
    request_id: np.ndarray
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    k: int
    cost: CostModel  # the cost model the schedulers estimate with ([model] scheduler_profile, else the pricing one)
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # optional trace columns (alpha, predictions)
    seed: int = 0         # scenario seed and replication: policies derive their random streams from these
    replication: int = 0  # (rng.stream_key(seed, replication, stream)), shared by every scheduler
    cache: dict[str, np.ndarray] = field(default_factory=dict)  # derived per-request arrays (policy helpers)
    acceptance: Any = None  # the replication's acceptance process; oracle policies (srpt-sd) read true draws
    step_table: Any = None  # the replication's step table (lapsbench.engine.steptable) priced by `cost`, for oracles
    view: RequestView = field(init=False)
    out: Results = field(init=False)

    def __post_init__(self) -> None:
        self.view = empty_view(self.arrival_s, self.prompt_tokens, self.output_tokens)
        self.out = Results.empty(len(self.arrival_s))

    @property
    def n(self) -> int:
        return len(self.arrival_s)


def _alias(group: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, group), name), doc=f"`{group}.{name}`")


for _name in ("generated", "steps", "decode_steps", "drafted", "attained_s", "last_service_s", "done"):
    setattr(EngineState, _name, _alias("view", _name))
for _name in Results._fields:
    setattr(EngineState, _name, _alias("out", _name))
