"""The local backend: points in a spawn-context process pool, or in-process with one worker."""

from __future__ import annotations

import itertools
from typing import Any

from lapsbench.run.sweep.tasks import Events, Outcome, Task, run_point


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops the workers


class LocalBackend:
    """A spawn-context process pool (fork is unsafe with polars' threads); one worker runs in-process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Any = None

    def run(self, tasks: list[Task], events: Events) -> list[Outcome]:
        if self.workers == 1:
            outcomes = []
            for t in tasks:
                events("start", t.id, None)
                outcomes.append(run_point(t))
                events("finish", t.id, outcomes[-1])
            return outcomes
        import concurrent.futures as cf
        import multiprocessing
        from concurrent.futures.process import BrokenProcessPool

        def start_pool() -> None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_ignore_sigint)

        if self._pool is None:
            start_pool()
        pending = iter(tasks)
        running: dict[Any, str] = {}
        outcomes: dict[str, Outcome] = {}

        def submit() -> None:
            for t in itertools.islice(pending, self.workers - len(running)):
                try:
                    fut = self._pool.submit(run_point, t)
                except BrokenProcessPool:  # a worker died (e.g. out of memory): its points failed; go on
                    self._pool.shutdown(wait=True, cancel_futures=True)
                    start_pool()
                    fut = self._pool.submit(run_point, t)
                running[fut] = t.id
                events("start", t.id, None)

        submit()
        while running:
            # a timeout keeps Ctrl-C responsive: a lock wait without one is not interrupted by SIGINT
            done, _ = cf.wait(running, timeout=0.2, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                tid = running.pop(fut)
                try:
                    outcome = fut.result()
                except Exception as exc:  # the worker process died (e.g. killed for memory)
                    outcome = Outcome(tid, False, error=f"worker died: {type(exc).__name__}: {exc}")
                outcomes[tid] = outcome
                events("finish", tid, outcome)
            submit()
        return [outcomes[t.id] for t in tasks]

    def close(self) -> None:
        if self._pool is not None:
            for proc in list(getattr(self._pool, "_processes", {}).values()):  # stop in-flight points now
                proc.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
