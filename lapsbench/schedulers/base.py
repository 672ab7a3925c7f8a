"""What a scheduler is, and the registry of the built-in ones.

A scheduler is a frozen dataclass (its user-facing parameters, validated in `__post_init__`) with

- `pack(state)`: run-once Python code that builds a NamedTuple of named fields (parameters, tables fixed
  from the workload, per-request mutable arrays) — the `P` its compiled functions read;
- `key(P, R, i)` (@staticmethod, @njit): request i's rank keys, lower first — a float or a tuple of up to
  three floats; ties go to the lower index (arrival order). R is a lapsbench.schedulers.api.RequestView;
- optionally `observe(P, R, served, m, end) -> bool` (after a step that served served[:m], ascending
  index) and `prerank(P, R, active, na, now) -> bool` (before each ranking); True = every key may have
  changed. Keys of a request may otherwise change only through its own service, unless `static_keys`.

The engines call these only through lapsbench.schedulers.dispatch (built-ins) or a generated copy of it
(user schedulers, lapsbench.schedulers.user), so every policy runs compiled."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from lapsbench.errors import LapsbenchError


@dataclass(frozen=True)
class Scheduler:
    """Base class of every scheduler (built-in or a user's): subclasses set `name` and `key`."""

    name: ClassVar[str] = ""
    preemptive: ClassVar[bool] = True    # False: a started request keeps the server (batch 1) until done
    static_keys: ClassVar[bool] = False  # True: a request's keys never change with its own service
    summary: ClassVar[str] = ""

    def derive(self, state: Any, held_out: np.ndarray | None = None) -> dict[str, Any]:
        """Parameters fixed from the workload once per run, before any engine: the runner calls it on the
        first replication's requests (`held_out`: output lengths of requests the run does not score), sets
        the returned parameters on every replication's scheduler and writes them to meta.json."""
        return {}

    def pack(self, state: Any) -> tuple:
        """The NamedTuple the compiled functions read (`state`: the lapsbench.engine.state.EngineState of the run)."""
        raise NotImplementedError


_REGISTRY: dict[str, type[Scheduler]] = {}


def register(cls: type[Scheduler]) -> type[Scheduler]:
    """Class decorator: add a built-in scheduler under its `name`; a duplicate name is a programming error."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"scheduler name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Scheduler]]:
    """The built-in schedulers by name."""
    import lapsbench.schedulers.builtin  # noqa: F401  (imports every scheduler module, which registers it)

    return dict(_REGISTRY)


def parameters(cls: type) -> dict[str, Any]:
    """A scheduler's settable parameters and their defaults."""
    return {f.name: f.default for f in fields(cls)} if hasattr(cls, "__dataclass_fields__") else {}


def is_user_reference(name: str) -> bool:
    """`file.py:Class` or `package.module:Class` names a user's scheduler."""
    return ":" in name


def scheduler_class(name: str, where: str = "scheduler", base: Any = None) -> type:
    """The class a scenario's scheduler name refers to: a built-in by name, or a user's (`base`: the
    directory a relative `file.py:Class` is resolved against)."""
    if is_user_reference(name):
        from lapsbench.schedulers.user import load_user_class

        return load_user_class(name, where, base)
    schedulers = registry()
    if name not in schedulers:
        close = difflib.get_close_matches(name, schedulers, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LapsbenchError(f"{where}.name: unknown scheduler {name!r}{hint}; expected one of "
                             f"{sorted(schedulers)} or FILE.py:CLASS")
    return schedulers[name]


def check_params(cls: type, name: str, params: dict[str, Any], where: str) -> None:
    """Unknown parameters and values of the wrong type, in one line each."""
    known = parameters(cls)
    for key, value in params.items():
        if key not in known:
            valid = sorted(known) or "none"
            raise LapsbenchError(f"{where}.{key}: unknown parameter of {name!r}; valid parameters: {valid}")
        default = known[key]
        if isinstance(default, bool) != isinstance(value, bool) or (
            isinstance(default, (int, float)) and not isinstance(value, (int, float))
        ) or (isinstance(default, str) and not isinstance(value, str)):
            raise LapsbenchError(f"{where}.{key}: {value!r} has the wrong type; expected like {default!r}")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
            raise LapsbenchError(f"{where}.{key}: {value!r} — expected an integer")


def make_policy(name: str, params: dict[str, Any] | None = None, where: str = "scheduler",
                base: Any = None) -> Scheduler:
    """Build a scheduler by name (built-in, or `file.py:Class` resolved against `base`), validating its
    parameters with one-line errors."""
    cls = scheduler_class(name, where, base)
    params = dict(params or {})
    check_params(cls, name, params, where)
    try:
        return cls(**params)
    except LapsbenchError:
        raise
    except (TypeError, ValueError) as exc:
        raise LapsbenchError(f"{where}: {exc}") from None
