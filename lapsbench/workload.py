"""Scenario → the arrays the engine consumes: the trace window, rate scale, and per-replication streams."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from lapsbench import rng
from lapsbench.acceptance import FixedAcceptance
from lapsbench.batching import BatchConfig
from lapsbench.costmodel import CostModel, find_profile, fixed_profile, load_profile_file
from lapsbench.errors import LapsbenchError
from lapsbench.scenario import FixedAcceptanceSpec, FixedProfileSpec, Scenario
from lapsbench.trace.schema import CORE_COLUMNS, read_trace
from lapsbench.trace.slicing import slice_trace


@dataclass(frozen=True)
class Workload:
    """The requests one scenario replays, in arrival order (the engine's request index)."""

    request_id: np.ndarray
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    columns: dict[str, np.ndarray]   # optional canonical columns present in the trace (alpha, predictions)
    passthrough: pl.DataFrame        # request_id + every non-canonical trace column, carried to results
    trace_path: Path

    @property
    def n(self) -> int:
        return len(self.arrival_s)


def workload_from_frame(df: pl.DataFrame, trace_path: Path = Path("<memory>")) -> Workload:
    df = df.sort(["arrival_s", "request_id"], maintain_order=True)
    columns = {c: df[c].to_numpy() for c in ("alpha", "predicted_output_tokens") if c in df.columns}
    extra = [c for c in df.columns if c not in CORE_COLUMNS]
    return Workload(
        request_id=df["request_id"].to_numpy().astype(np.int64),
        arrival_s=df["arrival_s"].to_numpy().astype(np.float64),
        prompt_tokens=df["prompt_tokens"].to_numpy().astype(np.int64),
        output_tokens=df["output_tokens"].to_numpy().astype(np.int64),
        columns=columns,
        passthrough=df.select(["request_id", *extra]),
        trace_path=trace_path,
    )


def load_workload(s: Scenario) -> Workload:
    path = s.resolve(s.trace.path)
    df = read_trace(path)
    df = slice_trace(df, start_s=s.trace.start_s, duration_s=s.trace.duration_s, rate_scale=s.trace.rate_scale,
                     max_requests=s.trace.max_requests)
    return workload_from_frame(df, path)


def build_cost(s: Scenario) -> CostModel:
    profile = s.model.profile
    if isinstance(profile, FixedProfileSpec):
        return fixed_profile(profile.step_s, profile.draft_step_s, profile.prefill_s_per_token)
    dirs = [Path.cwd()]
    if s.base_dir:
        dirs += [Path(s.base_dir), Path(s.base_dir).parent]
    path = find_profile(profile, dirs) if not Path(profile).is_file() else Path(profile)
    cost = load_profile_file(path, draft=s.model.draft or None)
    if s.speculation.k > 0 and cost.draft is None:
        raise LapsbenchError(f"model.profile: {path} has no draft model, but speculation.k = {s.speculation.k}")
    return cost


def build_acceptance(s: Scenario, w: Workload, replication: int) -> FixedAcceptance:
    """The acceptance process of one replication; shared by every scheduler (common random numbers)."""
    spec = s.speculation.acceptance
    key = rng.stream_key(s.seed, replication, rng.Streams.ACCEPTANCE)
    if isinstance(spec, FixedAcceptanceSpec):
        return FixedAcceptance(np.full(w.n, spec.alpha), w.request_id, s.speculation.k, key)
    raise NotImplementedError(type(spec))


def build_batch_config(s: Scenario, cost: CostModel) -> BatchConfig | None:
    """The batched engine's configuration, or None for batch size 1 (`batching = "none"`)."""
    e = s.engine
    if e.batching == "none":
        return None
    capacity = e.kv_capacity_tokens or cost.kv_capacity_tokens or np.inf
    step = e.max_batch * (s.speculation.k + 1)
    if e.batching == "continuous" and e.max_batch_tokens < step:
        raise LapsbenchError(f"engine.max_batch_tokens: {e.max_batch_tokens} is smaller than one decode step of a "
                             f"full batch (max_batch {e.max_batch} × (k + 1) = {step} tokens); expected >= {step}")
    return BatchConfig(mode=e.batching, max_batch=e.max_batch, max_batch_tokens=e.max_batch_tokens,
                       kv_capacity_tokens=float(capacity), preemption=e.preemption, block_size=e.block_size)
