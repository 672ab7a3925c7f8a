"""A scheduler's choices one step at a time, for the loops that run in Python (the batched engine's
step-by-step loop, the batch-1 replay, the reference engines in tests/): the same compiled functions the
compiled engines call, through the same one dispatch line (so a user's scheduler gets a generated copy of
this module too, lapsbench.schedulers.user)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from lapsbench.schedulers import dispatch
from lapsbench.schedulers.api import RequestView


@njit(cache=True)
def keys_of(code, P, R, active, now, rank):
    """The keys of active[:] (rows), after `prerank` when `rank` (a ranking follows)."""
    na = active.size
    if rank:
        dispatch.prerank(code, P, R, active, na, now)
    out = np.empty((na, 3))
    for j in range(na):
        out[j, 0], out[j, 1], out[j, 2] = dispatch.key(code, P, R, active[j])
    return out


@njit(cache=True)
def observe(code, P, R, served, end):
    """After a step that served `served` (ascending index) and ended at `end` seconds."""
    if dispatch.observes(code):
        dispatch.observe(code, P, R, served, served.size, end)


class Bound:
    """A scheduler bound to one run: its packed tuple P and the run's RequestView R."""

    def __init__(self, scheduler: Any, state: Any) -> None:
        from lapsbench.schedulers.user import code_and_module

        self.scheduler = scheduler
        self.code, self.module = code_and_module(scheduler, __name__)
        self.P = scheduler.pack(state)
        self.R = request_view(state)

    def keys(self, active: np.ndarray, now: float = 0.0, rank: bool = False) -> np.ndarray:
        """The keys of `active` (one row each), after `prerank` when `rank`."""
        return self.module.keys_of(self.code, self.P, self.R, np.ascontiguousarray(active, np.int64), float(now),
                                   rank)

    def order(self, active: np.ndarray, now: float) -> np.ndarray:
        """`active` (ascending index) best first: prerank, then (keys, index)."""
        active = np.ascontiguousarray(active, np.int64)
        k = self.keys(active, now, True)
        return active[np.lexsort((active, k[:, 2], k[:, 1], k[:, 0]))]

    def observe(self, served: np.ndarray, end: float) -> None:
        self.module.observe(self.code, self.P, self.R, np.unique(np.asarray(served, np.int64)), float(end))


def request_view(state: Any) -> RequestView:
    """The RequestView of an EngineState: views of its arrays (the engine writes through them)."""
    for name in ("generated", "steps", "decode_steps", "drafted"):
        assert getattr(state, name).dtype == np.int64
    return RequestView(np.ascontiguousarray(state.arrival_s, np.float64),
                       np.ascontiguousarray(state.prompt_tokens, np.int64),
                       np.ascontiguousarray(state.output_tokens, np.int64), state.generated, state.steps,
                       state.decode_steps, state.drafted, state.attained_s, state.last_service_s, state.done)
