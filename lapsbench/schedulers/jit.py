"""`njit` for the built-in scheduler modules, deferred: the decorator records the function and its options, and
numba compiles it only when something first uses it. A scheduler module then imports without numba, so that
parsing and validating a scenario (`lapsbench run` checks its input before any work) does not import numba.

A deferred function is used exactly like numba's dispatcher: called from Python it compiles and runs; reached
from compiled code (a global, a closure variable, `cls.key` in lapsbench.schedulers.dispatch) numba types it as
its dispatcher, once `enable()` has told numba how (dispatch.py calls it when it is imported; every engine and
every compiled caller of a scheduler's functions goes through dispatch.py). The dispatcher is a plain
module-level `numba.njit(**options)(function)`, so numba's disk cache works as before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Deferred:
    """A function numba compiles, with `options`, when it is first used (`dispatcher`)."""

    def __init__(self, py_func: Callable, options: dict[str, Any]) -> None:
        self.py_func = py_func
        self.options = options
        self._dispatcher = None
        self.__doc__ = py_func.__doc__
        self.__name__ = py_func.__name__
        self.__qualname__ = py_func.__qualname__
        self.__module__ = py_func.__module__

    @property
    def dispatcher(self):
        """numba's dispatcher of the function (numba is imported here, on first use)."""
        if self._dispatcher is None:
            import numba

            enable()
            self._dispatcher = numba.njit(**self.options)(self.py_func)
        return self._dispatcher

    def __call__(self, *args: Any) -> Any:
        return self.dispatcher(*args)

    def __repr__(self) -> str:
        return f"<deferred njit {self.__module__}.{self.__qualname__}>"


def njit(function: Callable | None = None, **options: Any):
    """numba.njit's signature (`@njit` or `@njit(cache=True, ...)`), compiled on first use."""
    if function is None:
        return lambda f: Deferred(f, options)
    return Deferred(function, options)


_enabled = False


def enable() -> None:
    """Teach numba to type a Deferred as its dispatcher (imports numba)."""
    global _enabled
    if _enabled:
        return
    from numba.extending import typeof_impl

    @typeof_impl.register(Deferred)
    def _typeof_deferred(value: Deferred, context):
        return typeof_impl(value.dispatcher, context)

    _enabled = True
