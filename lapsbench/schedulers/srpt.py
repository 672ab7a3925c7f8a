"""Oracle shortest remaining processing time: preemptive at step boundaries, by true remaining tokens."""

from dataclasses import dataclass
from typing import NamedTuple

from lapsbench.schedulers.base import Scheduler, register
from lapsbench.schedulers.jit import njit


class SRPTPacked(NamedTuple):
    pass


@register
@dataclass(frozen=True)
class SRPT(Scheduler):
    name = "srpt"
    summary = "oracle shortest remaining tokens first; preemptive at step boundaries"

    def pack(self, state) -> SRPTPacked:
        return SRPTPacked()

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        return float(R.output_tokens[i] - R.generated[i]), 0.0, 0.0
