"""Scenario → the arrays the engine consumes: the trace window, rate scale, and per-replication streams."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench.config.scenario import (
    BetaAcceptanceSpec,
    EmpiricalAcceptanceSpec,
    FixedAcceptanceSpec,
    FixedProfileSpec,
    Scenario,
)
from lapsbench.engine.context import BatchConfig
from lapsbench.errors import LapsbenchError
from lapsbench.models import rng
from lapsbench.models.acceptance import BetaAcceptance, EmpiricalAcceptance, FixedAcceptance, acceptance_records
from lapsbench.models.cost import CostModel, find_profile, fixed_profile, load_profile_file
from lapsbench.resources import ACCEPTANCE_FILE
from lapsbench.trace.schema import CORE_COLUMNS, read_trace, trace_hash
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
    acc_len: list[np.ndarray] | None = None  # the trace's optional per-request acceptance lengths

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
        acc_len=[np.asarray(a, np.int64) for a in df["acc_len"].to_list()] if "acc_len" in df.columns else None,
    )


def synth_seed(seed: int, replication: int) -> int:
    """The synth seed of one replication of a scenario with `[trace] synth` (fixed forever)."""
    return int(np.random.SeedSequence([seed, replication, 7]).generate_state(1, np.uint32)[0])


def _csv_spec(value: str) -> tuple[str, str] | None:
    """(PATH, ":COLUMN" or "") of a `csv:PATH[:COLUMN]` length spec; None for any other spec."""
    if not value.startswith("csv:"):
        return None
    rest = value[4:]
    file, sep, column = rest.partition(":") if not Path(rest).is_file() else (rest, "", "")
    return file, sep + column


def synth_options(s: Scenario) -> dict[str, Any]:
    """The `[trace] synth` table with the files of its `csv:` lengths resolved like every scenario path
    (absolute, so that a sweep worker anywhere finds them)."""
    opts = dict(s.trace.synth)
    for key in ("output", "prompt", "lengths"):
        csv = _csv_spec(opts[key]) if key in opts else None
        if csv:
            opts[key] = f"csv:{s.resolve(csv[0]).resolve()}{csv[1]}"
    return opts


def load_workload(s: Scenario, replication: int = 0) -> Workload:
    """The scenario's requests; with `[trace] synth` a fresh synthetic trace per replication."""
    if s.trace.synth:
        from lapsbench.trace.synth import synth_trace

        opts = synth_options(s)
        n, rate = int(opts.pop("requests")), float(opts.pop("rate"))
        try:
            df = synth_trace(n, rate, seed=synth_seed(s.seed, replication), **opts)
        except LapsbenchError as exc:
            raise LapsbenchError(f"trace.synth: {exc}") from None
        df = slice_trace(df, start_s=s.trace.start_s, duration_s=s.trace.duration_s, rate_scale=s.trace.rate_scale,
                         max_requests=s.trace.max_requests)
        return workload_from_frame(df, Path(f"<synth replication {replication}>"))
    path = s.resolve(s.trace.path)
    df = read_trace(path)
    df = slice_trace(df, start_s=s.trace.start_s, duration_s=s.trace.duration_s, rate_scale=s.trace.rate_scale,
                     max_requests=s.trace.max_requests)
    return workload_from_frame(df, path)


def held_out_output_tokens(s: Scenario, w: Workload) -> np.ndarray:
    """Output lengths of requests the run does not score, for predictors fitted once per run: with
    `[trace] synth`, an independent draw of the same generator (its own seed); with a trace file, every
    trace request outside the scored window (before and after it). Empty when the window is the whole trace."""
    if s.trace.synth:
        from lapsbench.trace.synth import synth_trace

        opts = synth_options(s)
        n, rate = int(opts.pop("requests")), float(opts.pop("rate"))
        seed = int(np.random.SeedSequence([s.seed, 0, 8]).generate_state(1, np.uint32)[0])
        return synth_trace(n, rate, seed=seed, **opts)["output_tokens"].to_numpy()
    df = read_trace(s.resolve(s.trace.path)).select("request_id", "output_tokens")
    return df.filter(~pl.col("request_id").is_in(w.request_id))["output_tokens"].to_numpy()


# Upper bound on a step table's bytes per step (int64 service time + int16/int32 tokens, with slack for the
# drawing's temporaries): at batch size 1 every step emits at least one token, so a replication takes at most
# sum(output_tokens) steps.
STEP_TABLE_BYTES_PER_STEP = 16


def physical_memory_bytes() -> int | None:
    """This machine's memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_workload(s: Scenario, w: Workload, cost: CostModel) -> None:
    """Refuse, before any simulation, requests that cannot be served or simulated: one whose prompt + output
    exceeds the KV-cache capacity (`engine.kv_capacity_tokens`, else the profile's; its KV must fit on the GPU,
    at batch size 1 too), or a replication whose steps would not fit in this machine's memory."""
    capacity = s.engine.kv_capacity_tokens or cost.kv_capacity_tokens
    source = "trace.synth" if s.trace.synth else str(w.trace_path)
    if capacity:
        need = w.prompt_tokens + w.output_tokens
        i = int(np.argmax(need))
        if need[i] > capacity:
            key = "engine.kv_capacity_tokens" if s.engine.kv_capacity_tokens else f"model.profile ({cost.name})"
            raise LapsbenchError(
                f"{source}: request {int(w.request_id[i])} needs {int(need[i]):,} tokens of KV cache (prompt "
                f"{int(w.prompt_tokens[i]):,} + output {int(w.output_tokens[i]):,}), more than {key} holds "
                f"({int(capacity):,} tokens); expected requests within the capacity (or a larger GPU)")
    steps = int(np.maximum(w.output_tokens, 1).sum())
    memory = physical_memory_bytes()
    if memory and steps * STEP_TABLE_BYTES_PER_STEP > memory:
        raise LapsbenchError(
            f"{source}: {w.n:,} requests with {steps:,} output tokens in all would need up to "
            f"{steps * STEP_TABLE_BYTES_PER_STEP / 2**30:,.1f} GiB of steps, more than this machine's "
            f"{memory / 2**30:,.1f} GiB; expected fewer or shorter requests (trace.max_requests, trace.duration_s)")


def trace_sha256(s: Scenario, file_hash: Callable[[Path], str] = trace_hash) -> str:
    """What identifies the scenario's requests (before its window and rate scale), as recorded in meta.json
    and in sweep point ids: the SHA-256 of the trace file; for `[trace] synth`, the SHA-256 of its
    parameters (`csv:` files by content) and the scenario seed, from which every replication's trace is drawn."""
    if not s.trace.synth:
        path = s.resolve(s.trace.path)
        if not path.is_file():
            raise LapsbenchError(f"trace.path: {s.trace.path!r} — no such trace file")
        return file_hash(path)
    params = synth_options(s)
    for key in ("output", "prompt", "lengths"):
        csv = _csv_spec(params[key]) if key in params else None
        if csv:
            if not Path(csv[0]).is_file():
                raise LapsbenchError(f"trace.synth.{key}: {s.trace.synth[key]!r} — no such file {csv[0]}")
            params[key] = f"csv:sha256:{file_hash(Path(csv[0]))}{csv[1]}"
    payload = json.dumps({"synth": params, "seed": s.seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def trace_identity(s: Scenario) -> dict[str, str]:
    """meta.json's `trace_path` and `trace_sha256` (see `trace_sha256`)."""
    path = "[trace] synth" if s.trace.synth else str(s.resolve(s.trace.path))
    return {"trace_path": path, "trace_sha256": trace_sha256(s)}


def model_identity(s: Scenario) -> dict[str, str]:
    """meta.json's `profile_sha256` (the profile pricing the steps) and `scheduler_profile_sha256` (the one the
    schedulers estimate with: the same unless `[model] scheduler_profile`): `lapsbench validate` checks that a
    real run's policies and its simulation's estimated alike. A fixed-profile table hashes its parameters."""
    profile = s.model.profile
    if isinstance(profile, FixedProfileSpec):
        priced = hashlib.sha256(json.dumps(dataclasses.asdict(profile), sort_keys=True).encode()).hexdigest()
    else:
        priced = trace_hash(profile_path(s))
    believed = trace_hash(scheduler_profile_file(s)) if s.model.scheduler_profile else priced
    return {"profile_sha256": priced, "scheduler_profile_sha256": believed}


def scheduler_profile_file(s: Scenario) -> Path | None:
    """The profile file the schedulers estimate with: `[model] scheduler_profile`, else the pricing profile's
    file (None for a fixed-profile table)."""
    if s.model.scheduler_profile:
        return profile_path(s, "scheduler_profile")
    return profile_path(s) if isinstance(s.model.profile, str) else None


def _is_profile_path(profile: str) -> bool:
    return profile.endswith(".toml") or "/" in profile or os.sep in profile


def profile_path(s: Scenario, key: str = "profile") -> Path:
    """The profile file of a named or path profile (`[model] profile`, or the `key` one): a value ending in
    .toml or holding a directory is a path (resolved like every scenario path), anything else a name looked up
    by `find_profile`."""
    profile = getattr(s.model, key)
    assert isinstance(profile, str)
    if _is_profile_path(profile):
        path = s.resolve(profile)
        if not path.is_file():
            raise LapsbenchError(f"model.{key}: {profile!r} — no such profile file ({path}: a relative path is "
                                 "read from the scenario's folder)")
        return path
    return find_profile(profile, f"model.{key}")


def with_absolute_paths(s: Scenario) -> Scenario:
    """The scenario with its file paths (trace or `csv:` lengths, a profile given as a path, acceptance
    records) resolved and absolute, so that a saved copy (results' scenario.toml, a sweep point) runs from
    any directory. Profile names stay names."""
    if s.trace.synth:
        trace = dataclasses.replace(s.trace, synth=synth_options(s))
    else:
        trace = dataclasses.replace(s.trace, path=str(s.resolve(s.trace.path).resolve()))
    model = s.model
    for key in ("profile", "scheduler_profile"):
        value = getattr(model, key)
        if isinstance(value, str) and value and _is_profile_path(value):
            model = dataclasses.replace(model, **{key: str(profile_path(s, key).resolve())})
    acceptance = s.speculation.acceptance
    if isinstance(acceptance, EmpiricalAcceptanceSpec) and acceptance.path:
        acceptance = dataclasses.replace(acceptance, path=str(s.resolve(acceptance.path).resolve()))
    return dataclasses.replace(s, trace=trace, model=model,
                               speculation=dataclasses.replace(s.speculation, acceptance=acceptance))


def build_cost(s: Scenario) -> CostModel:
    """The scenario's cost model; refuses (one line) a profile that cannot price what the scenario asks."""
    from lapsbench.config.speculation import frees_draft_memory

    profile = s.model.profile
    if isinstance(profile, FixedProfileSpec):
        cost = fixed_profile(profile.step_s, profile.draft_step_s, profile.prefill_s_per_token)
    else:
        cost = _load_profile(s, "profile")
    if frees_draft_memory(s.speculation.adaptive):
        from lapsbench.engine.adaptive import draft_kv_bytes

        draft_kv_bytes(cost)  # the memory SD off returns must be known
    return cost


def build_scheduler_cost(s: Scenario, cost: CostModel) -> CostModel:
    """The cost model the schedulers estimate with: `[model] scheduler_profile`, else `cost` itself."""
    return _load_profile(s, "scheduler_profile") if s.model.scheduler_profile else cost


def _load_profile(s: Scenario, key: str) -> CostModel:
    path = profile_path(s, key)
    cost = load_profile_file(path, draft=s.model.draft or None)
    if s.speculation.k > 0 and cost.draft is None:
        raise LapsbenchError(f"model.{key}: {path} has no draft model, but speculation.k = {s.speculation.k}")
    return cost


def build_acceptance(s: Scenario, w: Workload, replication: int) -> Any:
    """The acceptance process of one replication; shared by every scheduler (common random numbers)."""
    spec = s.speculation.acceptance
    k = s.speculation.k
    key = rng.stream_key(s.seed, replication, rng.Streams.ACCEPTANCE)
    if isinstance(spec, FixedAcceptanceSpec):
        alpha = np.full(w.n, spec.alpha)
        if spec.use_trace_alpha:
            if "alpha" not in w.columns:
                source = "the synthetic trace" if s.trace.synth else f"the trace {w.trace_path}"
                raise LapsbenchError(f"speculation.acceptance.use_trace_alpha: true, but {source} has no alpha "
                                     "column; expected a trace with per-request alpha, or use_trace_alpha = false")
            alpha = np.asarray(w.columns["alpha"], np.float64)
        return FixedAcceptance(alpha, w.request_id, k, key)
    if isinstance(spec, BetaAcceptanceSpec):
        g = np.random.default_rng(np.random.SeedSequence([s.seed, replication, rng.Streams.ACCEPTANCE_PARAMS]))
        alpha = g.beta(spec.mean * spec.concentration, (1.0 - spec.mean) * spec.concentration, w.n)
        return BetaAcceptance.build(
            alpha, w.request_id, w.output_tokens, k, key,
            rng.stream_key(s.seed, replication, rng.Streams.ACCEPTANCE_PARAMS), initial=spec.initial,
            warmup_steps=spec.warmup_steps, ar_phi=spec.ar_phi, ar_sigma=spec.ar_sigma, max_alpha=spec.max_alpha)
    if isinstance(spec, EmpiricalAcceptanceSpec):
        if spec.mapping == "trace":
            if w.acc_len is None:
                raise LapsbenchError("speculation.acceptance.mapping: \"trace\" but the trace has no acc_len column; "
                                     "expected one of ['resample', 'column'] or a trace with acc_len")
            lists = w.acc_len
        else:
            path = s.resolve(spec.path) if spec.path else ACCEPTANCE_FILE
            records = acceptance_records(str(path), spec.dataset, spec.method)
            if spec.mapping == "column":
                if spec.column not in w.passthrough.columns:
                    raise LapsbenchError(f"speculation.acceptance.column: {spec.column!r} is not a trace column; "
                                         f"expected one of {w.passthrough.columns[1:]}")
                idx = w.passthrough[spec.column].to_numpy()
                if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= len(records):
                    raise LapsbenchError(f"speculation.acceptance.column: {spec.column!r} must hold record indices "
                                         f"0..{len(records) - 1}")
            else:
                map_key = rng.stream_key(s.seed, replication, rng.Streams.ACCEPTANCE_MAPPING)
                u = rng.uniform(map_key, w.request_id, np.zeros(w.n, np.int64))
                idx = np.minimum((u * len(records)).astype(np.int64), len(records) - 1)
            lists = [records[i] for i in idx]
            top = max(int(a.max()) for a in records)
            if k + 1 > top:
                raise LapsbenchError(f"speculation.k: {k} — the acceptance data {spec.dataset}/{spec.method} records "
                                     f"at most {top} tokens per step; expected k <= {top - 1}")
        return EmpiricalAcceptance.build(lists, w.request_id, w.output_tokens, k, key)
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
                       kv_capacity_tokens=float(capacity), preemption=e.preemption, block_size=e.block_size,
                       admission=e.admission, admission_share=e.admission_share)
