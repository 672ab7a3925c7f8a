"""The engines' one door to the built-in schedulers' compiled functions.

Every engine module binds this module by exactly one line, `from lapsbench.schedulers import dispatch`,
and calls (all @njit; P = the scheduler's packed NamedTuple, R = a lapsbench.schedulers.api.RequestView):

    prerank(code, P, R, active, na, now) -> bool   before a ranking of active[:na]; True = all keys changed
    key(code, P, R, i) -> (f8, f8, f8)             request i's rank keys, lower first (ties: lower index)
    observe(code, P, R, served, m, end) -> bool    after a step that served served[:m] (ascending), ended at
                                                   `end` s, R already updated; True = all keys changed
    observes(code), ranks_with_side_effects(code), keys_static(code): whether observe / prerank do
                                                   anything and whether keys never change with service
    key_less(a0, a1, a2, ai, b0, b1, b2, bi)       the (keys, index) order

`code` is the scheduler's index in builtin.BUILTIN (`code_of`), passed as a plain int64 by every engine
(a literal code would compile each scheduler's functions once more per engine). The scheduler's functions
are found at compile time from P's type (each scheduler packs its own NamedTuple class), so every engine is
compiled once per scheduler with that scheduler's functions alone, called from key / observe / prerank here
(plain calls that LLVM inlines: numba's own inlining of the whole chain made each scheduler compile slower).
They are not passed as arguments or closures: numba's disk cache misses those in every new
process (measured), while module-level functions reached from here are cached. A user's scheduler gets a
generated copy of this interface and of each engine module (lapsbench.schedulers.user).
"""

from __future__ import annotations

import typing

import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload

from lapsbench.errors import LapsbenchError
from lapsbench.schedulers import jit
from lapsbench.schedulers.base import registry
from lapsbench.schedulers.builtin import BUILTIN

jit.enable()  # the schedulers' deferred njit functions (lapsbench.schedulers.jit) are typed as their dispatchers

CODE = {cls.name: code for code, cls in enumerate(BUILTIN)}


def _packed_class(cls: type) -> type:
    """The NamedTuple class a built-in scheduler's `pack` returns (its return annotation)."""
    return typing.get_type_hints(cls.pack)["return"]


_BY_PACKED = {_packed_class(cls): cls for cls in BUILTIN}
# distinct class names too: numba names a compiled specialisation by its argument types' names
if sorted(CODE) != sorted(registry()) or len({c.__name__ for c in _BY_PACKED}) != len(BUILTIN):
    raise RuntimeError(f"the dispatch table {sorted(CODE)} does not match the registry {sorted(registry())}")
_OBSERVES = np.array([hasattr(cls, "observe") for cls in BUILTIN])
_PRERANKS = np.array([hasattr(cls, "prerank") for cls in BUILTIN])
_STATIC = np.array([cls.static_keys for cls in BUILTIN])
N_CODES = len(BUILTIN)


def code_of(scheduler) -> int:
    """The dispatch code of a built-in scheduler (instance or class); a LapsbenchError for any other."""
    name = scheduler.name
    if name not in CODE or not isinstance(scheduler, BUILTIN[CODE[name]]) and scheduler is not BUILTIN[CODE[name]]:
        raise LapsbenchError(f"scheduler {name!r} is not a built-in scheduler (no dispatch code)")
    return CODE[name]


def _scheduler_of(code, P) -> type:
    """The built-in scheduler whose packed tuple P is (at compile time); a literal `code` must agree."""
    cls = _BY_PACKED.get(getattr(P, "instance_class", None))
    if cls is None:
        raise TypingError(f"no built-in scheduler packs {P}")
    if isinstance(code, types.IntegerLiteral) and code.literal_value != CODE[cls.name]:
        raise TypingError(f"scheduler code {code.literal_value} with the packed tuple of {cls.name!r}")
    return cls


# ------------------------------------------------------------------ the scheduler's functions, by P's type
def _key(code, P, R, i):
    raise NotImplementedError  # compiled only


def _prerank(code, P, R, active, na, now):
    raise NotImplementedError


def _observe(code, P, R, served, m, end):
    raise NotImplementedError


def three(x):
    """A key as three floats: a number k → (k, 0, 0); a tuple of 1..3 numbers padded with zeros."""
    raise NotImplementedError


@overload(three, inline="always")
def _three(x):
    if isinstance(x, (types.Float, types.Integer, types.Boolean)):
        return lambda x: (float(x), 0.0, 0.0)
    if isinstance(x, types.BaseTuple) and len(x) == 1:
        return lambda x: (float(x[0]), 0.0, 0.0)
    if isinstance(x, types.BaseTuple) and len(x) == 2:
        return lambda x: (float(x[0]), float(x[1]), 0.0)
    if isinstance(x, types.BaseTuple) and len(x) == 3:
        return lambda x: (float(x[0]), float(x[1]), float(x[2]))
    raise TypingError(f"a scheduler's key must return a number or a tuple of 1 to 3 numbers, not {x}")


@overload(_key)
def _key_impl(code, P, R, i):
    f = _scheduler_of(code, P).key
    return lambda code, P, R, i: three(f(P, R, i))


@overload(_prerank)
def _prerank_impl(code, P, R, active, na, now):
    cls = _scheduler_of(code, P)
    if not hasattr(cls, "prerank"):
        return lambda code, P, R, active, na, now: False
    f = cls.prerank
    return lambda code, P, R, active, na, now: f(P, R, active, na, now)


@overload(_observe)
def _observe_impl(code, P, R, served, m, end):
    cls = _scheduler_of(code, P)
    if not hasattr(cls, "observe"):
        return lambda code, P, R, served, m, end: False
    f = cls.observe
    return lambda code, P, R, served, m, end: f(P, R, served, m, end)


# ------------------------------------------------------------------------------------------- contract
@njit(cache=True)
def prerank(code, P, R, active, na, now):
    return _prerank(code, P, R, active, na, now)


@njit(cache=True)
def key(code, P, R, i):
    return _key(code, P, R, i)


@njit(cache=True)
def observe(code, P, R, served, m, end):
    return _observe(code, P, R, served, m, end)


@njit(cache=True)
def _check(code):
    if code < 0 or code >= N_CODES:
        raise ValueError("unknown scheduler code")


@njit(cache=True)
def observes(code):
    """Whether `observe` does anything for this scheduler (engines may skip calling it otherwise)."""
    _check(code)
    return _OBSERVES[code]


@njit(cache=True)
def ranks_with_side_effects(code):
    """Whether `prerank` does anything for this scheduler (engines may skip calling it otherwise)."""
    _check(code)
    return _PRERANKS[code]


@njit(cache=True)
def keys_static(code):
    """Whether a request's keys never change with its own service (engines may skip recomputing them)."""
    _check(code)
    return _STATIC[code]


@njit(cache=True)
def key_less(a0, a1, a2, ai, b0, b1, b2, bi):
    """Lexicographic (keys, index) order: does request a rank before request b?"""
    if a0 != b0:
        return a0 < b0
    if a1 != b1:
        return a1 < b1
    if a2 != b2:
        return a2 < b2
    return ai < bi
