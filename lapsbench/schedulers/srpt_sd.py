"""SRPT-SD: the oracle lower bound of speculative decoding at batch size 1 — shortest true remaining
*time* first, where the remaining time is computed from the acceptance process's own future draws (the
steps the request will really take) and the cost profile (what each of those steps will really cost).
Preemptive at step boundaries. Needs EngineState.acceptance (the runner sets it)."""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from lapsbench.schedulers._common import TrueFuture
from lapsbench.schedulers.base import Scheduler, register
from lapsbench.schedulers.jit import njit


class SRPTSDPacked(NamedTuple):
    first: np.ndarray    # int64: the request's first row in the step table
    n_steps: np.ndarray  # int64: its steps
    cum_ns: np.ndarray   # float64: the table's cumulative ns per row (exact in float64 below 2^53 ns)


@register
@dataclass(frozen=True)
class SRPTSD(Scheduler):
    name = "srpt-sd"
    summary = "oracle shortest true remaining time under the true future acceptance; preemptive"

    def pack(self, state) -> SRPTSDPacked:
        table = TrueFuture(state).table
        return SRPTSDPacked(np.ascontiguousarray(table.offset[:-1], np.int64),
                            np.ascontiguousarray(table.n_steps, np.int64), table.cum_ns.astype(np.float64))

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        s = min(R.steps[i], P.n_steps[i])
        first = P.first[i]
        done_ns = P.cum_ns[first + s - 1] if s > 0 else 0.0
        return P.cum_ns[first + P.n_steps[i] - 1] - done_ns, 0.0, 0.0
