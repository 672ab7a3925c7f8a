"""A scheduler's choices one step at a time, for the loops that run in Python (the batched engine's
step-by-step loop, the batch-1 replay, the reference engines in tests/): the same compiled functions the
compiled engines call, through the same one dispatch line (so a user's scheduler gets a generated copy of
this module too, lapsbench.schedulers.user). The batch-1 replay's whole decision and bookkeeping per step
are two compiled calls (`choose_single`, `serve_single`), so its host time does not depend on the policy."""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from lapsbench.schedulers import dispatch
from lapsbench.schedulers.api import RequestView
from lapsbench.units import NS


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


@njit(cache=True, _nrt=False)
def choose_single(code, P, R, out, arrival_ns, now_ns, last, preemptive, active):
    """The batch-1 decision at `now_ns`: (the request to serve next, or -1 if none is present; the number
    admitted). The present requests (arrived, not done) are ranked afresh — prerank, then the lowest
    (keys, index) — unless a non-preemptive policy keeps `last`; a switch away from an unfinished `last`
    counts a preemption. `active`: scratch of n entries."""
    admitted = np.searchsorted(arrival_ns, now_ns, side="right")
    na = np.int64(0)  # not a literal 0 (nor 1 below): prerank / observe would be compiled once more for it
    for i in range(admitted):
        if not R.done[i]:
            active[na] = i
            na += 1
    if na == 0:
        return -1, admitted
    if not preemptive and last >= 0 and not R.done[last]:
        chosen = last
    else:
        dispatch.prerank(code, P, R, active, na, now_ns / NS)
        chosen = active[0]
        c0, c1, c2 = dispatch.key(code, P, R, chosen)
        for j in range(1, na):
            i = active[j]
            a0, a1, a2 = dispatch.key(code, P, R, i)
            if dispatch.key_less(a0, a1, a2, i, c0, c1, c2, chosen):
                chosen, c0, c1, c2 = i, a0, a1, a2
    if last >= 0 and chosen != last and not R.done[last]:
        out.preemptions[last] += 1
    return chosen, admitted


@njit(cache=True, _nrt=False)
def serve_single(code, P, R, out, i, tokens, took_ns, now_ns, k, attained_ns, served):
    """Book request i's batch-1 step that emitted `tokens`, took `took_ns` and ended at `now_ns`, then
    `observe`; returns whether i is done. `attained_ns`: each request's service so far (ns, updated);
    `served`: scratch of one entry."""
    step = R.steps[i]
    now_s = now_ns / NS
    attained_ns[i] += took_ns
    R.generated[i] += tokens
    R.steps[i] = step + 1
    R.decode_steps[i] = step
    if step > 0:
        R.drafted[i] += k
    R.attained_s[i] = attained_ns[i] / NS
    R.last_service_s[i] = now_s
    if step == 0:
        out.first_token_s[i] = now_s
    if dispatch.observes(code):
        served[0] = i
        dispatch.observe(code, P, R, served, np.int64(1), now_s)
    if R.generated[i] >= R.output_tokens[i]:
        R.done[i] = True
        out.finish_s[i] = now_s
        return True
    return False


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

    def choose_single(self, out: Any, arrival_ns: np.ndarray, now_ns: int, last: int, preemptive: bool,
                      active: np.ndarray) -> tuple[int, int]:
        """`choose_single` with this scheduler's module."""
        return self.module.choose_single(self.code, self.P, self.R, out, arrival_ns, now_ns, last, preemptive,
                                         active)

    def serve_single(self, out: Any, i: int, tokens: int, took_ns: int, now_ns: int, k: int,
                     attained_ns: np.ndarray, served: np.ndarray) -> bool:
        """`serve_single` with this scheduler's module."""
        return self.module.serve_single(self.code, self.P, self.R, out, i, tokens, took_ns, now_ns, k,
                                        attained_ns, served)


def request_view(state: Any) -> RequestView:
    """The RequestView of an EngineState: views of its arrays (the engine writes through them)."""
    for name in ("generated", "steps", "decode_steps", "drafted"):
        assert getattr(state, name).dtype == np.int64
    return RequestView(np.ascontiguousarray(state.arrival_s, np.float64),
                       np.ascontiguousarray(state.prompt_tokens, np.int64),
                       np.ascontiguousarray(state.output_tokens, np.int64), state.generated, state.steps,
                       state.decode_steps, state.drafted, state.attained_s, state.last_service_s, state.done)
