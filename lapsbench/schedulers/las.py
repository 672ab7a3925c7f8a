"""Least attained service (foreground-background): preemptive, the least-served request runs next, ties
by arrival — requests tied at the least service take turns, one step each, which is how FB's processor
sharing among equals looks at step granularity.

`unit` is how service is counted: "steps" (default; at batch size 1 each step is one forward of the
request), "tokens" (output tokens generated) or "seconds" (GPU time attained)."""

from dataclasses import dataclass
from typing import NamedTuple

from lapsbench.schedulers._common import UNIT_CODE, attained, need_choice
from lapsbench.schedulers.base import Scheduler, register
from lapsbench.schedulers.jit import njit


class LASPacked(NamedTuple):
    unit: int  # a UNIT_* code


@register
@dataclass(frozen=True)
class LAS(Scheduler):
    unit: str = "steps"

    name = "las"
    summary = "least attained service first (FB); ties share round-robin; preemptive"

    def __post_init__(self) -> None:
        need_choice("unit", self.unit, ("steps", "tokens", "seconds"))

    def pack(self, state) -> LASPacked:
        return LASPacked(UNIT_CODE[self.unit])

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        return attained(R, P.unit, i), 0.0, 0.0
