"""Run every scheduler of a scenario on the same requests and randomness; collect per-request records."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from lapsbench.engine import simulate
from lapsbench.policies import make_policy
from lapsbench.scenario import Scenario
from lapsbench.state import EngineState
from lapsbench.workload import Workload, build_acceptance, build_cost, load_workload

# progress(label, replication, finished, total)
Progress = Callable[[str, int, int, int], None]


@dataclass
class RunResult:
    requests: pl.DataFrame
    workload: Workload
    wall_s: float


def records(state: EngineState, label: str, policy: str, replication: int) -> pl.DataFrame:
    """The flat per-request record (contract: requests.parquet), one row per request."""
    out = state.output_tokens
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (state.finish_s - state.first_token_s) / (out - 1), np.nan)
    return pl.DataFrame({
        "scheduler": pl.Series([label] * state.n, dtype=pl.String),
        "policy": pl.Series([policy] * state.n, dtype=pl.String),
        "replication": np.full(state.n, replication, np.int32),
        "request_id": state.request_id,
        "arrival_s": state.arrival_s,
        "first_token_s": state.first_token_s,
        "finish_s": state.finish_s,
        "prompt_tokens": state.prompt_tokens,
        "output_tokens": out,
        "steps": state.steps,
        "preemptions": state.preemptions,
        "attained_s": state.attained_s,
        "jct_s": state.finish_s - state.arrival_s,
        "ttft_s": state.first_token_s - state.arrival_s,
        "tpot_s": tpot,
    }).with_columns(pl.col("tpot_s").fill_nan(None))


def run_scenario(s: Scenario, progress: Progress | None = None) -> RunResult:
    start = time.perf_counter()
    workload = first = load_workload(s)
    cost = build_cost(s)
    frames = []
    for replication in range(s.replications):
        if s.trace.synth and replication > 0:  # synthetic traces are drawn afresh per replication
            workload = load_workload(s, replication)
        acceptance = build_acceptance(s, workload, replication)
        for spec in s.scheduler:
            policy = make_policy(spec.name, spec.params, f"scheduler {spec.label}")
            state = EngineState(workload.request_id, workload.arrival_s, workload.prompt_tokens,
                                workload.output_tokens, s.speculation.k, cost, columns=dict(workload.columns),
                                seed=s.seed, replication=replication, acceptance=acceptance)
            callback = None
            if progress is not None:
                def callback(done: int, _label: str = spec.label, _rep: int = replication,
                             _n: int = workload.n) -> None:
                    progress(_label, _rep, done, _n)
            simulate(state, policy, acceptance, callback)
            frames.append(records(state, spec.label, spec.name, replication))
    requests = pl.concat(frames)
    workload = first
    if workload.passthrough.width > 1 and not s.trace.synth:
        requests = requests.join(workload.passthrough, on="request_id", how="left", maintain_order="left")
    return RunResult(requests=requests, workload=workload, wall_s=time.perf_counter() - start)
