"""The fitted profile as a file: the KV-cache capacity of the GPU and the profile TOML (docs/profiles.md)."""

from __future__ import annotations

import json
import math
from typing import Any

from lapsbench.calibrate.forward import ACTIVATION_RESERVE_BYTES, GPU_MEMORY_UTILIZATION, KV_BLOCK, Candidate
from lapsbench.calibrate.models import MODELS, LlamaConfig
from lapsbench.errors import LapsbenchError
from lapsbench.models.cost import STEP_KEYS, StepModel

KNOWN_GPU_MEMORY_GB = {"H100 80GB": 80.0, "H100 NVL": 94.0, "H100 PCIe": 80.0, "H200": 141.0, "A100-SXM4-80GB": 80.0,
                       "A100 80GB": 80.0, "A100-SXM4-40GB": 40.0, "L40S": 48.0, "A10G": 24.0}


def gpu_memory_bytes(gpu: str, sidecar: dict[str, Any], override_gb: float | None) -> int:
    if override_gb is not None:
        if not override_gb > 0:
            raise LapsbenchError(f"--gpu-memory-gb: {override_gb} must be > 0")
        return int(override_gb * 1e9)
    if sidecar.get("gpu_memory_bytes"):
        return int(sidecar["gpu_memory_bytes"])
    for key, gb in KNOWN_GPU_MEMORY_GB.items():
        if key.lower() in gpu.lower():
            return int(gb * 1e9)
    raise LapsbenchError(f"gpu {gpu!r}: GPU memory unknown; pass --gpu-memory-gb")


def model_config(name: str, sidecar: dict[str, Any], extra: dict[str, LlamaConfig]) -> LlamaConfig:
    if name in extra:
        return extra[name]
    if name in sidecar.get("models", {}):
        return LlamaConfig(**sidecar["models"][name])
    if name in MODELS:
        return MODELS[name]
    raise LapsbenchError(f"model {name!r}: shape unknown (needed for KV capacity); pass "
                         f"--model-config {name}:hidden=H,intermediate=I,layers=L,heads=A,kv_heads=K,vocab=V")


def kv_capacity_tokens(gpu_bytes: int, target: LlamaConfig, draft: LlamaConfig | None) -> int:
    """Tokens of KV cache: (90% of GPU memory − weights of target and draft − activation reserve) divided by
    the KV bytes of a token in target *and* draft (the draft keeps its own cache), rounded down to 16."""
    weights = target.weight_bytes + (draft.weight_bytes if draft else 0)
    per_token = target.kv_bytes_per_token + (draft.kv_bytes_per_token if draft else 0)
    free = GPU_MEMORY_UTILIZATION * gpu_bytes - weights - ACTIVATION_RESERVE_BYTES
    if free <= 0:
        raise LapsbenchError(f"target and draft weights ({weights / 1e9:.1f} GB) do not fit in "
                             f"{gpu_bytes / 1e9:.1f} GB of GPU memory; expected a larger --gpu-memory-gb")
    return int(free // per_token) // KV_BLOCK * KV_BLOCK


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


STEP_LOG = "step log"  # key of the step-level errors in `fits` (and [fit."step log".PHASE] in the profile)


def render_profile(top: dict[str, Any], models: dict[str, dict[str, Candidate]],
                   fits: dict[str, dict[str, dict[str, Any]]], provenance: dict[str, Any],
                   step: StepModel | None = None, notes: dict[str, str] | None = None) -> str:
    """The profile TOML (written by hand: no TOML writer dependency). `notes`: a comment per model."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    if step is not None:
        lines += ["", "[step]"]
        lines += [f"{k} = {_toml_value(getattr(step, k))}" for k in STEP_KEYS
                  if getattr(step, k) is not None and getattr(step, k) != ()
                  and not (k == "prefill_bucket_tokens" and not step.prefill_bucket_ms)]
    for name, phases in models.items():
        for phase, c in phases.items():
            lines += ["", f"[models.{json.dumps(name)}.{phase}]"]
            if notes and name in notes:
                lines.append(f"# {notes[name]}")
            lines.append(f"form = {json.dumps(c.form)}")
            if c.form == "pnorm":
                lines.append(f"p = {c.p!r}")
            lines += [f"{k} = {v!r}" for k, v in c.coef.items()]
            if c.form in ("max", "pnorm"):
                lines += ["", f"[models.{json.dumps(name)}.{phase}.compute]"]
                lines += [f"{k} = {v!r}" for k, v in c.compute.items()]
            if c.short_below > 0:
                lines += ["", f"[models.{json.dumps(name)}.{phase}.short]", f"below_tokens = {c.short_below!r}"]
                lines += [f"{k} = {v!r}" for k, v in (c.short or {}).items()]
            if c.wide_from > 0:
                lines += ["", f"[models.{json.dumps(name)}.{phase}.wide]", f"from_batch = {c.wide_from!r}"]
                lines += [f"{k} = {v!r}" for k, v in (c.wide or {}).items()]
    for name, phases in fits.items():
        for phase, st in phases.items():
            lines += ["", f"[fit.{json.dumps(name)}.{phase}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in st.items()]
    lines += ["", "[provenance]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in provenance.items()]
    return "\n".join(lines) + "\n"

