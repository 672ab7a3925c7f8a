"""Scheduling policies, one small module each, registered by name (see base.py)."""

from lapsbench.policies import fcfs, las, rr, sjf, srpt  # noqa: F401
from lapsbench.policies.base import Plan, Policy, make_policy, register, registry

__all__ = ["Plan", "Policy", "make_policy", "register", "registry"]
