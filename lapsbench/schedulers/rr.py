"""Round robin: every present request gets one step in turn (approximates processor sharing).

The turn order is by the time a request was last served (or arrived, if never served), so a newcomer
joins the back of the rotation. Ties: arrival, then id."""

from dataclasses import dataclass
from typing import NamedTuple

from lapsbench.schedulers.base import Scheduler, register
from lapsbench.schedulers.jit import njit


class RoundRobinPacked(NamedTuple):
    pass


@register
@dataclass(frozen=True)
class RoundRobin(Scheduler):
    name = "rr"
    summary = "round robin, one step each (processor sharing at step granularity)"

    def pack(self, state) -> RoundRobinPacked:
        return RoundRobinPacked()

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        return R.last_service_s[i], 0.0, 0.0
