"""Schedulers: one module each (parameters, `pack`, compiled `key` / `observe` / `prerank`), the registry,
the engines' dispatch, and users' schedulers loaded from a file (docs/schedulers.md)."""

from lapsbench.schedulers.api import RequestView
from lapsbench.schedulers.base import Scheduler, make_policy, register, registry

__all__ = ["RequestView", "Scheduler", "make_policy", "register", "registry"]
