"""What a scheduling policy is: a ranking of the requests present, plus how long that ranking holds.

The engine owns time, queues, batches and preemption; a policy only says who goes first. Lower keys go
first; ties are broken by arrival order, then request id (the engine sorts stably by workload index,
which is arrival order). A policy may keep small per-request arrays of its own (allocated in `prepare`)
and update them in `observe` after each run of steps."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from lapsbench.errors import LapsbenchError
from lapsbench.state import EngineState

INF_STEPS = np.iinfo(np.int64).max // 4


@dataclass(frozen=True)
class Plan:
    """What to run next on a batch-1 server: `group` serves round-robin, one step each, for at most
    `max_steps` steps (group of one = run that request). The engine also stops at every arrival and
    completion, then asks the policy again."""

    group: np.ndarray
    max_steps: int


class Policy:
    """Base class. Subclasses set `name`, `preemptive`, parameters as dataclass fields, and `rank`."""

    name: ClassVar[str] = ""
    preemptive: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    # True when `observe` must see one step at a time with the state as of that step (e.g. it moves a
    # request at most one queue level per call): the batched engine then steps such a policy one step at a
    # time. (At batch size 1 the policy's own `plan` horizon already stops at every such event.)
    observes_each_step: ClassVar[bool] = False

    def derive(self, state: EngineState, held_out: np.ndarray | None = None) -> dict[str, Any]:
        """Parameters this policy fixes from the workload once per run, before the engine: the runner calls
        it on the first replication's requests (`held_out`: output lengths of requests the run does not
        score, for predictors), sets the returned parameters on every replication's policy and writes them
        to meta.json. {} = nothing derived."""
        return {}

    def prepare(self, state: EngineState) -> None:
        """Allocate per-request arrays before a run."""

    def rank(self, state: EngineState, active: np.ndarray, now: float) -> np.ndarray | tuple[np.ndarray, ...]:
        """Keys for the `active` requests (sorted by index): one array, or a tuple (primary key first)."""
        raise NotImplementedError

    def plan(self, state: EngineState, order: np.ndarray, now: float) -> Plan:
        """Batch 1: run the best-ranked request until the next arrival or completion. Policies whose
        ranking changes as service accrues override this to say how long the ranking holds."""
        return Plan(order[:1], INF_STEPS)

    def batch_horizon(self, state: EngineState, batch: np.ndarray, now: float) -> int:
        """Continuous batching: steps for which the chosen batch stays the best (absent arrivals and
        completions, which the engine handles). Non-preemptive policies keep their batch; a preemptive
        policy re-ranks every step unless it knows better."""
        return INF_STEPS if not self.preemptive else 1

    def observe(self, state: EngineState, served: np.ndarray, emitted: np.ndarray, end_s: np.ndarray) -> None:
        """Called after steps run: request served by each step, tokens it emitted, step end times."""

    def kernel(self, state: EngineState) -> Any:
        """This policy restated for the compiled engines (a lapsbench.policies.compiled.PolicyKernel,
        called after `prepare`), or None to run on the Python engines."""
        return None


_REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: add a policy under its `name`; a duplicate name is a programming error."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"policy name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Policy]]:
    import lapsbench.policies  # noqa: F401  (imports every policy module, which registers it)

    return dict(_REGISTRY)


def parameters(cls: type[Policy]) -> dict[str, Any]:
    """A policy's settable parameters and their defaults."""
    return {f.name: f.default for f in fields(cls)} if hasattr(cls, "__dataclass_fields__") else {}


def make_policy(name: str, params: dict[str, Any] | None = None, where: str = "scheduler") -> Policy:
    """Build a policy by registered name, validating its parameters with one-line errors."""
    policies = registry()
    if name not in policies:
        import difflib

        close = difflib.get_close_matches(name, policies, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LapsbenchError(f"{where}.name: unknown scheduler {name!r}{hint}; expected one of {sorted(policies)}")
    cls = policies[name]
    params = dict(params or {})
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
    try:
        policy = cls(**params)
    except LapsbenchError:
        raise
    except (TypeError, ValueError) as exc:
        raise LapsbenchError(f"{where}: {exc}") from None
    return policy
