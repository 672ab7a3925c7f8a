"""Run every scheduler of a scenario on the same requests and randomness; collect per-request records."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from lapsbench.config.scenario import Scenario
from lapsbench.config.speculation import batch1_k
from lapsbench.engine.batch1_goodput import build_goodput_step_table
from lapsbench.engine.context import RunContext, StepExecutor
from lapsbench.engine.executor import SimulatedExecutor, replay_single
from lapsbench.engine.state import EngineState
from lapsbench.engine.steptable import build_step_table, repriced
from lapsbench.errors import LapsbenchError
from lapsbench.models.kchoice import pack_adaptive
from lapsbench.run.assembly import (
    Workload,
    build_acceptance,
    build_batch_config,
    build_cost,
    build_scheduler_cost,
    check_workload,
    held_out_output_tokens,
    load_workload,
)
from lapsbench.schedulers.base import Scheduler, make_policy
from lapsbench.schedulers.user import code_and_module

# progress(label, replication, finished, total)
Progress = Callable[[str, int, int, int], None]


@dataclass
class RunResult:
    requests: pl.DataFrame
    workload: Workload
    wall_s: float
    engine_stats: pl.DataFrame | None = None  # per (scheduler, replication): batch size, KV utilisation
    derived: dict | None = None  # per scheduler label: the parameters its policy derived from the workload


def records(state: EngineState, label: str, policy: str, replication: int, adaptive: bool = False) -> pl.DataFrame:
    """The flat per-request record (contract: requests.parquet), one row per request; under `[speculation]
    adaptive` with the request's mean draft length `k_mean` = drafted / decode_steps (absent otherwise, so
    fixed-K results are unchanged)."""
    out = state.output_tokens
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (state.finish_s - state.first_token_s) / (out - 1), np.nan)
    frame = pl.DataFrame({
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
        "itl_s": np.where(state.decode_steps > 0,
                          (state.finish_s - state.first_token_s) / np.maximum(state.decode_steps, 1), np.nan),
        "decode_steps": state.decode_steps,
        "preempted_s": state.preempted_s,
    }).with_columns(pl.col("tpot_s").fill_nan(None), pl.col("itl_s").fill_nan(None))
    if adaptive:
        with np.errstate(invalid="ignore", divide="ignore"):
            k_mean = np.where(state.decode_steps > 0, state.drafted / np.maximum(state.decode_steps, 1), np.nan)
        frame = frame.with_columns(pl.Series("k_mean", k_mean).fill_nan(None))
    return frame


def run_scenario(s: Scenario, progress: Progress | None = None, executor: SimulatedExecutor | None = None) -> RunResult:
    """Simulate every scheduler of `s`; with an `executor` (lapsbench replay), each step is also executed by it
    and its clock gives the time, one step at a time, with the same decisions and acceptance draws."""
    start = time.perf_counter()
    workload = first = load_workload(s)
    cost = build_cost(s)
    check_workload(s, workload, cost)
    batching = build_batch_config(s, cost)
    adaptive = s.speculation.adaptive is not None
    k1 = batch1_k(s.speculation.adaptive, s.speculation.k)
    if adaptive and batching is None and k1 is not None:  # one decoding request per step: a constant K
        s = dataclasses.replace(s, speculation=dataclasses.replace(s.speculation, k=k1, adaptive=None))
    per_step_table = adaptive and batching is None and k1 is None  # goodput at batch 1: K per step in the table
    packed = pack_adaptive(s.speculation.adaptive, s.speculation.k) if s.speculation.adaptive else None
    believed = build_scheduler_cost(s, cost)  # what the schedulers estimate with (usually `cost` itself)
    if per_step_table and believed is not cost:
        raise LapsbenchError("model.scheduler_profile: not available with [speculation] adaptive goodput at batch "
                             "1 (each step's K is chosen by the pricing profile); expected no scheduler_profile")
    frames = []
    stats = []
    params, derived = derived_parameters(s, workload, believed)
    check_user_schedulers(s, workload, believed, params)
    for replication in range(s.replications):
        if s.trace.synth and replication > 0:  # synthetic traces are drawn afresh per replication
            workload = load_workload(s, replication)
            check_workload(s, workload, cost)
        acceptance = build_acceptance(s, workload, replication)
        # Every request's steps are drawn once per replication for all schedulers: at batch size 1 they are the
        # steps themselves (schedule-independent); batched, the engine reads each decode step's tokens from them.
        if per_step_table:
            table = build_goodput_step_table(workload.prompt_tokens, workload.output_tokens, s.speculation.k, cost,
                                             acceptance, packed)
        else:
            table = build_step_table(workload.request_id, workload.prompt_tokens, workload.output_tokens,
                                     s.speculation.k, cost, acceptance)
        ctx = RunContext(s.speculation.k, cost, table, batching, acceptance, packed)
        believed_table = table if believed is cost else repriced(
            table, workload.prompt_tokens, workload.output_tokens, s.speculation.k, believed, acceptance)
        for spec in s.scheduler:
            policy = make_policy(spec.name, params[spec.label], f"scheduler {spec.label}", s.base_dir)
            state = EngineState(workload.request_id, workload.arrival_s, workload.prompt_tokens,
                                workload.output_tokens, s.speculation.k, believed, columns=dict(workload.columns),
                                seed=s.seed, replication=replication, acceptance=acceptance,
                                step_table=believed_table)
            callback = None
            if progress is not None:
                def callback(done: int, _label: str = spec.label, _rep: int = replication,
                             _n: int = workload.n) -> None:
                    progress(_label, _rep, done, _n)
            if executor is not None:
                executor.begin(state, spec.label, replication, unit_ns=batching is None)
            row = serve(state, policy, ctx, callback, executor)
            if per_step_table:
                k_mean, off_share = table.k_stats()
                row.update(k_mean=k_mean, sd_off_share=off_share)
            elif adaptive and batching is None:
                row.update(k_mean=float(s.speculation.k), sd_off_share=float(s.speculation.k == 0))
            stats.append({"scheduler": spec.label, "replication": replication, **row})
            frames.append(records(state, spec.label, policy.name, replication, adaptive))
    return collect(s, first, frames, stats, start, derived)


def _writeable(P: tuple) -> tuple:
    """The packed scheduler with contiguous, writeable arrays: numba types read-only arrays apart (another
    compilation of the engine)."""
    return type(P)(*(np.require(a, a.dtype, ["C_CONTIGUOUS", "WRITEABLE"]) if isinstance(a, np.ndarray) else a
                     for a in P))


def serve(state: EngineState, policy: Scheduler, ctx: RunContext, progress: Callable[[int], None] | None = None,
          executor: StepExecutor | SimulatedExecutor | None = None, check: bool = False) -> dict[str, float]:
    """Run one scheduler over `state`'s requests on the engine ctx.batching says (batch 1 when None); fills the
    state's progress and result columns and returns the engine statistics. With an `executor` (replay) every
    step is also executed by it, and its clock gives the time."""
    if ctx.batching is not None:
        code, engine = code_and_module(policy, "lapsbench.engine.batched")
        return engine.run_batched(state.view, state.out, ctx, code, _writeable(policy.pack(state)),
                                  policy.preemptive, policy.name, progress, check, executor, state.request_id)
    if executor is None:
        code, engine = code_and_module(policy, "lapsbench.engine.batch1")
        engine.run_batch1(state.view, state.out, ctx, code, _writeable(policy.pack(state)), policy.preemptive,
                          progress)
    else:
        replay_single(state, policy, ctx.table, executor, progress)
    return batch1_stats(state)


def batch1_stats(state: EngineState) -> dict[str, float]:
    """Engine statistics of a batch-1 run (the batched engine's `stats()` keys)."""
    return {"batch_size_mean": 1.0, "batch_size_max": 1.0, "kv_util_mean": float("nan"),
            "kv_util_max": float("nan"), "busy_s": float(state.attained_s.sum())}


def collect(s: Scenario, workload: Workload, frames: list[pl.DataFrame], stats: list[dict], start: float,
            derived: dict[str, dict] | None = None) -> RunResult:
    """Per-request records of every run, with the trace's pass-through columns, as one RunResult."""
    requests = pl.concat(frames)
    if workload.passthrough.width > 1 and not s.trace.synth:
        requests = requests.join(workload.passthrough, on="request_id", how="left", maintain_order="left")
    engine_stats = pl.DataFrame(stats).with_columns(pl.col("replication").cast(pl.Int32))
    return RunResult(requests=requests, workload=workload, wall_s=time.perf_counter() - start,
                     engine_stats=engine_stats, derived=derived or {})


def check_user_schedulers(s: Scenario, workload: Workload, cost, params: dict[str, dict]) -> None:
    """Compile every user scheduler's functions on the first requests: one line, before any engine runs."""
    from lapsbench.schedulers.user import check_user_scheduler, is_user

    for spec in s.scheduler:
        policy = make_policy(spec.name, params[spec.label], f"scheduler {spec.label}", s.base_dir)
        if is_user(policy):
            state = EngineState(workload.request_id, workload.arrival_s, workload.prompt_tokens,
                                workload.output_tokens, s.speculation.k, cost, columns=dict(workload.columns),
                                seed=s.seed)
            check_user_scheduler(policy, state, f"scheduler {spec.label}")


def derived_parameters(s: Scenario, workload: Workload, cost) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per scheduler label: its parameters with what its policy derives from the workload (Scheduler.derive),
    fixed once per run from the first replication's requests before any engine runs; and the derived part
    alone (for meta.json)."""
    state = EngineState(workload.request_id, workload.arrival_s, workload.prompt_tokens, workload.output_tokens,
                        s.speculation.k, cost, columns=dict(workload.columns), seed=s.seed)
    held_out = None
    params, derived = {}, {}
    for spec in s.scheduler:
        policy = make_policy(spec.name, spec.params, f"scheduler {spec.label}", s.base_dir)
        if held_out is None and type(policy).derive is not Scheduler.derive:
            held_out = held_out_output_tokens(s, workload)
        extra = policy.derive(state, held_out)
        params[spec.label] = {**spec.params, **extra}
        if extra:
            derived[spec.label] = extra
    return params, derived
