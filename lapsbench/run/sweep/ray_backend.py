"""The Ray backend: points as Ray tasks on a local instance or a cluster (--address)."""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path
from typing import Any

from lapsbench.errors import LapsbenchError
from lapsbench.run.sweep.tasks import Events, Outcome, Task, run_point


def _check_reachable(address: str) -> None:
    """Fail fast (exit 2) on an address nothing listens on, instead of Ray's long connection retries."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise LapsbenchError(f"--address: {address!r} — expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise LapsbenchError(f"--address: cannot reach a Ray cluster at {address} ({exc})") from None


class RayBackend:
    """Ray tasks (one CPU each). Without --address a local Ray instance with `workers` CPUs is started;
    the worktree's lapsbench is put on the workers' PYTHONPATH so an uninstalled checkout works too."""

    def __init__(self, workers: int, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise LapsbenchError("--backend ray: Ray is not installed; install it with "
                                 "pip install 'lapsbench[ray]'") from None
        import logging

        self.ray = ray
        pkg_parent = str(Path(__file__).resolve().parents[3])  # the directory holding lapsbench/
        path = os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH", "")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
                                      "log_to_driver": False, "runtime_env": runtime_env}
            if address:
                _check_reachable(address)
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers
            try:
                ray.init(**kwargs)
            except Exception as exc:
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise LapsbenchError(f"--address: cannot join the Ray cluster at {address or 'local'} "
                                     f"({line})") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = max(1, cpus if address else workers)
        self._remote = ray.remote(num_cpus=1, max_retries=0)(run_point)

    def run(self, tasks: list[Task], events: Events) -> list[Outcome]:
        ray = self.ray
        pending = iter(tasks)
        running: dict[Any, str] = {}
        outcomes: dict[str, Outcome] = {}

        def submit() -> None:
            for t in itertools.islice(pending, self.slots - len(running)):
                running[self._remote.remote(t)] = t.id
                events("start", t.id, None)

        submit()
        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
            for ref in done:
                tid = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task's worker died
                    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    outcome = Outcome(tid, False, error=f"ray task failed: {line}")
                outcomes[tid] = outcome
                events("finish", tid, outcome)
            submit()
        return [outcomes[t.id] for t in tasks]

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
