"""First come, first served: run requests to completion in arrival order."""

from dataclasses import dataclass
from typing import NamedTuple

from lapsbench.schedulers.base import Scheduler, register
from lapsbench.schedulers.jit import njit


class FCFSPacked(NamedTuple):
    pass


@register
@dataclass(frozen=True)
class FCFS(Scheduler):
    name = "fcfs"
    preemptive = False
    static_keys = True
    summary = "first come, first served; non-preemptive"

    def pack(self, state) -> FCFSPacked:
        return FCFSPacked()

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        return R.arrival_s[i], 0.0, 0.0
