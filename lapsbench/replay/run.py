"""A scenario replayed through an executor: checks, the run, and the results directory (+ steps.parquet)."""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.config.scenario import Scenario
from lapsbench.engine.executor import SimulatedExecutor
from lapsbench.engine.steplog import write_steplog
from lapsbench.errors import LapsbenchError
from lapsbench.run.assembly import build_batch_config, build_cost, load_workload, scheduler_profile_file
from lapsbench.run.runner import Progress, RunResult, run_scenario


def check_replayable(s: Scenario) -> None:
    """What the replay engine implements: batch 1 and continuous batching with recompute preemption, the draft's
    KV pool kept throughout."""
    from lapsbench.config.speculation import frees_draft_memory

    if frees_draft_memory(s.speculation.adaptive):
        raise LapsbenchError("speculation.adaptive.free_draft_memory: true — replay keeps the draft's KV pool "
                             "(it neither lends it to the target nor rebuilds the draft's KV); expected "
                             "free_draft_memory = false")
    if s.engine.batching not in ("none", "continuous"):
        raise LapsbenchError(f"engine.batching: {s.engine.batching!r} — replay runs 'none' (batch 1) or "
                             "'continuous'")
    if s.engine.batching == "continuous" and s.engine.preemption != "recompute":
        raise LapsbenchError(f"engine.preemption: {s.engine.preemption!r} — replay implements recompute "
                             "preemption only; expected 'recompute'")


def pin_to_cpu(cpu: int) -> None:
    """Run this process (and the threads it starts later) on one CPU, or one line (exit 2) if it cannot."""
    if not hasattr(os, "sched_setaffinity"):
        raise LapsbenchError(f"--cpu: {cpu} — this platform cannot pin a process to a CPU (no sched_setaffinity)")
    allowed = sorted(os.sched_getaffinity(0))
    if cpu not in allowed:
        raise LapsbenchError(f"--cpu: {cpu} — expected one of the CPUs this process may use: "
                             f"{', '.join(map(str, allowed))}")
    os.sched_setaffinity(0, {cpu})


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the replay's clock runs, and back as it was after. Its
    collections are triggered by allocations, i.e. inside steps: a middle-generation one took ~0.5 ms (a
    twentieth of a batch-1 decode step) in a CPU replay of calib-b1-lease, a cost of the harness's language, not
    of serving. Each run still starts with a full collection and a freeze (TorchExecutor.begin)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def replay_scenario(s: Scenario, executor: SimulatedExecutor,
                    progress: Progress | None = None) -> tuple[RunResult, pl.DataFrame]:
    """Every scheduler of `s`, each step run by `executor`; the per-request results and the step log."""
    check_replayable(s)
    workload = load_workload(s)
    cost = build_cost(s)
    batching = build_batch_config(s, cost)
    capacity = batching.kv_capacity_tokens if batching is not None else np.inf
    executor.prepare(workload.prompt_tokens, workload.output_tokens, s.speculation.k, capacity,
                     batching.max_batch if batching is not None else 1, s.engine.block_size)
    from lapsbench.progress import on_compile

    # a fresh machine compiles each scheduler's decision on first use, a warm one loads it from numba's cache
    with on_compile(executor.compiling, loads=True), collector_paused():
        result = run_scenario(s, progress, executor)
    executor.finish()
    return result, executor.log.frame()


def write_replay(out_dir: Path, s: Scenario, result: RunResult, steps: pl.DataFrame, executor: SimulatedExecutor,
                 command: str) -> pl.DataFrame:
    """`run`'s results layout plus steps.parquet and scheduler_profile.toml (the profile its cost-aware policies
    estimated with, a copy); meta.json names the executor (and GPU, torch, CUDA)."""
    from lapsbench.run.output import write_results

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    believed = scheduler_profile_file(s)

    def extra_files(tmp: Path) -> None:
        write_steplog(tmp / "steps.parquet", steps)
        if believed is not None:  # a simulation of this replay estimates with it (model.scheduler_profile)
            shutil.copyfile(believed, tmp / "scheduler_profile.toml")

    summary, _ = write_results(out_dir, s, result, command, extra_meta={"replay": {**executor.meta(), "cpus": cpus}},
                               extra_files=extra_files)
    return summary

