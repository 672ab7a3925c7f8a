"""`calibrate fit` and `calibrate check`: a cost profile from measured forward times (forward.py) and/or an
engine's step log (step_fit.py), written as a profile TOML (profile_file.py); a profile checked against
measurements."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench.calibrate.forward import (
    ACTIVATION_RESERVE_BYTES,
    GPU_MEMORY_UTILIZATION,
    MIN_LOO_ROWS,
    MIN_ROWS,
    Candidate,
    features,
    fit_phase,
    predict_ms,
    read_measured,
)
from lapsbench.calibrate.models import LlamaConfig, parse_model_spec
from lapsbench.calibrate.profile_file import (
    STEP_LOG,
    gpu_memory_bytes,
    kv_capacity_tokens,
    model_config,
    render_profile,
)
from lapsbench.calibrate.step_fit import STEP_TERM_SETS, fit_from_steps, fit_step_terms, gpu_of_steps
from lapsbench.calibrate.steplog import read_steplog
from lapsbench.config.toml import read_toml
from lapsbench.errors import LapsbenchError
from lapsbench.fsutil import atomic_file
from lapsbench.models.cost import PHASES, CostModel, StepModel

Fits = dict[str, dict[str, dict[str, Any]]]   # model (or STEP_LOG) → phase → fit statistics


def _check_args(measured: Path | None, steps: Path | None, test_frac: float, batch_sizes: tuple[int, ...],
                span_multiple: int, prefill_bucket: int) -> None:
    """The arguments of `fit_profile` that need no file read, checked first (one line, exit 2)."""
    if not 0 <= test_frac < 1:
        raise LapsbenchError(f"--test-frac: {test_frac} must be in [0, 1)")
    if measured is None and steps is None:
        raise LapsbenchError("calibrate fit: give a measured file, --steps STEPS, or both")
    if (batch_sizes or span_multiple or prefill_bucket) and steps is None:
        raise LapsbenchError("--batch-sizes/--span-multiple/--prefill-bucket: describe a step log's engine; give "
                             "--steps")
    if list(batch_sizes) != sorted(set(batch_sizes)) or any(b < 1 for b in batch_sizes):
        raise LapsbenchError(f"--batch-sizes: {list(batch_sizes)}; expected ascending integers >= 1")
    if span_multiple < 0:
        raise LapsbenchError(f"--span-multiple: {span_multiple}; expected an integer >= 0")
    if prefill_bucket < 0:
        raise LapsbenchError(f"--prefill-bucket: {prefill_bucket}; expected a number of tokens >= 0")


def _fit_measured(df: pl.DataFrame, measured: Path, target: str | None, drafts: list[str],
                  sidecar: dict[str, Any], extra: dict[str, LlamaConfig], rng: np.random.Generator,
                  test_frac: float) -> tuple[str, dict[str, dict[str, Candidate]], Fits]:
    """(target, forward models, their fit statistics) per (model, phase) of the measurements: every phase of
    the target (default: the largest model measured), the decode phase (and prefill, when measured) of each
    draft."""
    have = df["model"].unique().sort().to_list()
    if target is None:
        sizes = {m: model_config(m, sidecar, extra).params for m in have}
        target = max(have, key=lambda m: sizes[m])
    if target not in have:
        raise LapsbenchError(f"--target: {target!r} has no rows in {measured}; have {have}")
    for d in drafts:
        if d not in have:
            raise LapsbenchError(f"--draft: {d!r} has no rows in {measured}; have {have}")
    models: dict[str, dict[str, Candidate]] = {}
    fits: Fits = {}
    for m in [target, *drafts]:
        needed = PHASES if m == target else ("decode",)
        for phase in PHASES:
            rows = df.filter((pl.col("model") == m) & (pl.col("phase") == phase))
            if rows.height == 0 and phase not in needed:
                continue
            if rows.height < MIN_LOO_ROWS:
                raise LapsbenchError(f"{measured}: model {m} phase {phase} has {rows.height} rows; expected at "
                                     f"least {MIN_LOO_ROWS} to fit ({MIN_ROWS} to hold some out)")
            X, y = features(rows), rows["ms_median"].to_numpy().astype(np.float64)
            cand, stats = fit_phase(X, y, rng, test_frac, wide=phase == "decode")
            models.setdefault(m, {})[phase] = cand
            fits.setdefault(m, {})[phase] = stats
    return target, models, fits


def _forward_cost(models: dict[str, dict[str, Candidate]], target: str, drafts: list[str]) -> CostModel:
    """The cost model of fitted forward models (target, and the first draft when there is one)."""
    return CostModel("fit", target=models[target]["decode"].model(),
                     target_prefill=models[target]["prefill"].model(),
                     draft=models[drafts[0]]["decode"].model() if drafts else None,
                     draft_prefill=models[drafts[0]]["prefill"].model()
                     if drafts and "prefill" in models[drafts[0]] else None)


def _provenance(measured: Path | None, df: pl.DataFrame | None, step_files: list[Path], log: pl.DataFrame | None,
                command: str, seed: int, test_frac: float, sidecar: dict[str, Any], gpu_bytes: int,
                tcfg: LlamaConfig, dcfg: LlamaConfig | None) -> dict[str, Any]:
    """The profile's [provenance]: inputs by hash, the fit's settings, the measuring tool's record."""
    prov: dict[str, Any] = {"tool": "lapsbench calibrate fit", "fit_command": command,
                            "fit_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if measured is not None and df is not None:
        prov.update({"measured_file": measured.name,
                     "measured_sha256": hashlib.sha256(measured.read_bytes()).hexdigest(), "measured_rows": df.height})
    if step_files and log is not None:
        prov.update({"steps_files": [str(f) for f in step_files],
                     "steps_sha256": [hashlib.sha256(f.read_bytes()).hexdigest() for f in step_files],
                     "steps_rows": log.height})
    prov.update({
        "seed": seed, "test_frac": test_frac,
        "form_selection": "4-fold CV on training rows (relative RMSE) among linear, max, pnorm p=2,4,8"
        + ("; measured decode also with a wide-batch regime from 16, 32 or 64 requests" if df is not None else "")
        + ("; step-log prefill also with a short-prefill regime below 128..1024 tokens" if df is None else "")
        + ("; [step] terms among " + ", ".join(STEP_TERM_SETS) if df is not None and log is not None else "")
        + "; leave-one-out below 12 rows",
        "gpu_memory_bytes": gpu_bytes, "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
        "activation_reserve_bytes": ACTIVATION_RESERVE_BYTES,
        "target_params": tcfg.params, "draft_params": dcfg.params if dcfg else 0,
    })
    for k in ("tool", "gpu", "torch", "cuda", "date", "command", "host"):
        if sidecar.get(k) is not None:
            prov[f"measure_{k}"] = sidecar[k]
    return prov


def fit_profile(measured: Path | None, out: Path, target: str | None, drafts: list[str], name: str | None,
                gpu: str | None, gpu_memory_gb: float | None, host_link_gb_s: float | None,
                model_configs: list[str], test_frac: float, seed: int, command: str,
                steps: Path | list[Path] | None = None,
                batch_sizes: tuple[int, ...] = (), span_multiple: int = 0, prefill_bucket: int = 0
                ) -> tuple[Fits, dict[str, Any]]:
    """Fit the profile from forward measurements (every (model, phase) it needs), from a step log
    (`fit_from_steps`), or both (forward models, then the [step] terms from the log: `fit_step_terms`);
    write `out` atomically. Step-level errors are under fits[STEP_LOG]. `batch_sizes`, `span_multiple`: the
    engine's CUDA-graph padding of decode steps (StepModel), for a step log; `prefill_bucket` > 0: the engine
    pads prefill chunks to multiples of that many tokens, and the fit adds a correction per padded length
    (StepModel.prefill_bucket_ms). Several step logs (of one engine, e.g. batch-1 and batched runs) are fitted
    together."""
    step_files = [steps] if isinstance(steps, Path) else list(steps or [])
    steps = step_files[0] if step_files else None
    _check_args(measured, steps, test_frac, batch_sizes, span_multiple, prefill_bucket)
    pad = StepModel(batch_sizes=tuple(batch_sizes), span_multiple=span_multiple, prefill_bucket_tokens=prefill_bucket)
    log = pl.concat([read_steplog(f) for f in step_files], how="diagonal") if step_files else None
    where = steps if len(step_files) == 1 else Path(", ".join(str(f) for f in step_files))
    df = read_measured(measured, gpu) if measured is not None else None
    sidecar: dict[str, Any] = {}
    if measured is not None:
        sidecar_path = Path(f"{measured}.json")
        sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
    extra = dict(parse_model_spec(s) for s in model_configs)
    rng = np.random.default_rng(seed)
    step: StepModel | None = None
    notes: dict[str, str] = {}
    if df is not None:
        assert measured is not None
        target, models, fits = _fit_measured(df, measured, target, drafts, sidecar, extra, rng, test_frac)
        gpu_name = df["gpu"][0]
        if log is not None:
            if (log["k"].to_numpy() > 0).any() and not drafts:
                raise LapsbenchError(f"--draft: {where} has SD steps (k > 0); name the draft model")
            step, fits[STEP_LOG] = fit_step_terms(_forward_cost(models, target, drafts), log, rng, test_frac, pad)
    else:
        assert log is not None and steps is not None
        if target is None:
            raise LapsbenchError("--target: name the target model of the step log (for its KV cache and shape)")
        gpu_name = gpu_of_steps(steps, gpu)
        fits = {}
        models, step, fits[STEP_LOG], notes = fit_from_steps(log, where, target, drafts, rng, test_frac, pad)
    tcfg = model_config(target, sidecar, extra)
    dcfg = model_config(drafts[0], sidecar, extra) if drafts else None
    gpu_bytes = gpu_memory_bytes(gpu_name, sidecar, gpu_memory_gb)
    top: dict[str, Any] = {
        "name": name or out.stem, "gpu": gpu_name, "target": target}
    if drafts:
        top["draft"] = drafts[0]
    top["kv_capacity_tokens"] = kv_capacity_tokens(gpu_bytes, tcfg, dcfg)
    top["kv_bytes_per_token"] = tcfg.kv_bytes_per_token
    top["host_link_gb_s"] = float(host_link_gb_s or sidecar.get("host_link_gb_s") or 25.0)
    prov = _provenance(measured, df, step_files, log, command, seed, test_frac, sidecar, gpu_bytes, tcfg, dcfg)
    text = render_profile(top, models, fits, prov, step, notes)
    with atomic_file(out) as tmp:
        tmp.write_text(text)
    return fits, top


def check_profile(profile: Path, measured: Path, gpu: str | None) -> list[dict[str, Any]]:
    """Per model and phase in both files: MAPE, worst APE and bias (mean signed relative error)."""
    from lapsbench.models.cost import _phase

    data = read_toml(profile, "profile")
    pmodels = data.get("models")
    if not isinstance(pmodels, dict) or not pmodels:
        raise LapsbenchError(f"{profile}: no [models] table; expected a fitted profile")
    df = read_measured(measured, gpu)
    out = []
    for (m, phase), rows in sorted(df.group_by(["model", "phase"]), key=lambda g: g[0]):
        if m not in pmodels or phase not in pmodels[m]:
            continue
        pm = _phase(pmodels[m][phase], f"{profile}: models.{m}.{phase}")
        y = rows["ms_median"].to_numpy().astype(np.float64)
        rel = predict_ms(pm, features(rows)) / y - 1
        out.append({"model": m, "phase": phase, "rows": len(y), "mape": float(np.mean(np.abs(rel))),
                    "max_ape": float(np.max(np.abs(rel))), "bias": float(np.mean(rel))})
    if not out:
        raise LapsbenchError(f"{measured}: no (model, phase) rows match models in {profile} ({sorted(pmodels)})")
    return out

