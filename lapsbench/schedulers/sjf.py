"""Oracle shortest job first: non-preemptive, by true output length (ties: arrival, then id)."""

from dataclasses import dataclass
from typing import NamedTuple

from lapsbench.schedulers.base import Scheduler, register
from lapsbench.schedulers.jit import njit


class SJFPacked(NamedTuple):
    pass


@register
@dataclass(frozen=True)
class SJF(Scheduler):
    name = "sjf"
    preemptive = False
    static_keys = True
    summary = "oracle shortest job first by true output tokens; non-preemptive"

    def pack(self, state) -> SJFPacked:
        return SJFPacked()

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        return float(R.output_tokens[i]), 0.0, 0.0
