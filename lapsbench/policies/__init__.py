"""Scheduling policies, one small module each, registered by name (see base.py)."""

from lapsbench.policies import (  # noqa: F401
    fcfs,
    laps_sd,
    las,
    ltr,
    mlfq,
    rr,
    sjf,
    skip_join_mlfq,
    srpt,
    srpt_sd,
    ssjf,
)
from lapsbench.policies.base import Plan, Policy, make_policy, register, registry

__all__ = ["Plan", "Policy", "make_policy", "register", "registry"]
