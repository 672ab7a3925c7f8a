"""Progress of a run at no measurable cost, and a word while numba compiles.

The compiled engines run a whole simulation in one call: returning to Python to report progress would
cost a numba dispatch each time. Instead the loop writes its finished count into an array it already holds
and releases the GIL (`nogil=True`); `run_polled` runs it in a worker thread while the calling thread
reads that count every POLL_S seconds and calls the progress callback. The loop does the same work with or
without a callback, so results are identical bit for bit. Ctrl-C in the calling thread sets the loop's
stop flag (checked by the loop as it serves) and waits for it to return before re-raising, so no thread is
left writing into arrays.

The Python engines call progress through `Throttled`: at most every POLL_S seconds, and at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

POLL_S = 0.1  # progress updates per second: 10 (what a terminal bar needs)


def run_polled(loop: Any, args: tuple, counter: np.ndarray, done: int, stop: int,
               progress: Callable[[int], None] | None) -> Any:
    """Call the numba dispatcher `loop(*args)` (compiled with nogil=True) in a worker thread and return what
    it returns. Meanwhile call `progress(counter[done])` whenever that count changed, every POLL_S
    seconds, and once at the end. Compilation (or loading from numba's cache) happens first, here, so a
    Ctrl-C while compiling interrupts at once; a Ctrl-C while running sets `counter[stop]`, which the loop
    checks and returns on, and is re-raised once the loop has returned."""
    import numba

    loop.compile(tuple(numba.typeof(a) for a in args))
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append(loop(*args))
        except BaseException as exc:  # noqa: BLE001  (re-raised in the calling thread)
            outcome.append(exc)

    worker = threading.Thread(target=work, name="lapsbench-engine", daemon=True)
    worker.start()
    seen = -1
    try:
        while True:
            worker.join(POLL_S)
            running = worker.is_alive()
            if progress is not None and int(counter[done]) != seen:
                seen = int(counter[done])
                progress(seen)
            if not running:
                break
    except BaseException:
        counter[stop] = 1
        worker.join()
        raise
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


class Throttled:
    """`progress` called at most every `interval` seconds with a new count, and always for the last count
    `total` (once): a callback's cost cannot dominate a run however often the engine reports."""

    def __init__(self, progress: Callable[[int], None], total: int, interval: float = POLL_S) -> None:
        self.progress, self.total, self.interval = progress, total, interval
        self.last, self.seen = -np.inf, -1

    def __call__(self, done: int) -> None:
        if done == self.seen:
            return
        now = time.monotonic()
        if done >= self.total or now - self.last >= self.interval:
            self.last, self.seen = now, done
            self.progress(done)


@contextmanager
def on_compile(notify: Callable[[bool], None], loads: bool = False) -> Iterator[None]:
    """Within the block, `notify(True)` when numba starts compiling (a cache miss: the first run after
    installing or changing lapsbench) and `notify(False)` when it is done; nothing on a warm cache, where
    numba only loads. With `loads`, also around each load from the cache (a few ms per function on the
    first call of each signature), which a wall-clock replay keeps off its clock. Nested compilations
    (callees) count as one."""
    from numba.core import event

    class Listener(event.Listener):
        depth = 0

        def on_start(self, ev: event.Event) -> None:
            self.depth += 1
            if self.depth == 1:
                notify(True)

        def on_end(self, ev: event.Event) -> None:
            self.depth -= 1
            if self.depth == 0:
                notify(False)

    # numba takes its compiler lock (re-entrantly) to compile or to load a signature, and only then
    with event.install_listener("numba:compiler_lock" if loads else "numba:compile", Listener()):
        yield
