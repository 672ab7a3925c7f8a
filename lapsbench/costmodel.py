"""GPU step-time model: what one engine step costs, vectorised over many steps at once.

A step of a speculative-decoding engine is `k` draft forwards plus one target forward that verifies
`k + 1` tokens for every decoding request, plus the prefill of requests admitted in that step. The
time of each forward comes from a *phase model*: a linear combination of batch features, fitted per
GPU, model and phase (`decode` or `prefill`) by `lapsbench calibrate fit`.

Features of one forward over a batch of requests, request i having `q_i` new (query) tokens and
`c_i` cached (context) tokens:

    const = 1, batch = Σ 1, tokens = Σ q_i, context = Σ c_i,
    tokens_sq = Σ q_i², tokens_context = Σ q_i·c_i

Phase-model times are in milliseconds in profile files and seconds in the API.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lapsbench.errors import LapsbenchError
from lapsbench.resources import PROFILES_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FEATURES = ("const", "batch", "tokens", "context", "tokens_sq", "tokens_context")
PHASES = ("decode", "prefill")


@dataclass(frozen=True)
class PhaseModel:
    """t_ms = Σ coef[f]·feature[f] (form "linear"), or, for form "max", the larger of two linear parts:
    a memory-bound part (`coef`) and a compute-bound part (`coef_compute`) — the roofline knee. Form
    "pnorm" is the smooth roofline (M^p + C^p)^(1/p) of the same two parts: a forward is many kernels,
    each with its own knee, so the measured transition is gradual; p → ∞ gives "max"."""

    coef: dict[str, float]
    coef_compute: dict[str, float] = field(default_factory=dict)
    form: str = "linear"
    p: float = 0.0

    def time_s(self, **features: np.ndarray | float) -> np.ndarray:
        def linear(coefs: dict[str, float]) -> np.ndarray:
            total = np.zeros(np.shape(next(iter(features.values()))), dtype=np.float64)
            for name, value in coefs.items():
                total = total + (value if name == "const" else value * np.asarray(features[name], np.float64))
            return total

        ms = linear(self.coef)
        if self.form == "max":
            ms = np.maximum(ms, linear(self.coef_compute))
        elif self.form == "pnorm":
            mem = np.maximum(ms, 0.0)
            comp = np.maximum(linear(self.coef_compute), 0.0)
            top = np.maximum(np.maximum(mem, comp), 1e-300)  # scale out before the power: no overflow
            ms = top * ((mem / top) ** self.p + (comp / top) ** self.p) ** (1.0 / self.p)
        return ms / 1000.0


@dataclass(frozen=True)
class CostModel:
    """Prices steps. `fixed_*` set means the fixed profile: every decode/verify step costs `step_s`."""

    name: str
    target: PhaseModel | None = None
    target_prefill: PhaseModel | None = None
    draft: PhaseModel | None = None
    draft_prefill: PhaseModel | None = None
    fixed_step_s: float | None = None
    fixed_draft_step_s: float = 0.0
    fixed_prefill_s_per_token: float = 0.0
    kv_capacity_tokens: int = 0
    kv_bytes_per_token: float = 0.0
    host_link_gb_s: float = 25.0
    meta: dict = field(default_factory=dict)

    @property
    def is_fixed(self) -> bool:
        return self.fixed_step_s is not None

    def verify_s(self, n: np.ndarray, query_tokens: np.ndarray, context: np.ndarray) -> np.ndarray:
        """One target decode/verify forward over `n` requests with `query_tokens` new tokens in total."""
        n = np.asarray(n, np.float64)
        if self.is_fixed:
            return np.where(n > 0, self.fixed_step_s, 0.0)
        assert self.target is not None
        t = self.target.time_s(
            batch=n, tokens=query_tokens, context=context,
            tokens_sq=np.asarray(query_tokens, np.float64) ** 2 / np.maximum(n, 1),
            tokens_context=np.asarray(query_tokens, np.float64) * np.asarray(context, np.float64)
            / np.maximum(n, 1),
        )
        return np.where(n > 0, t, 0.0)

    def draft_s(self, n: np.ndarray, context: np.ndarray) -> np.ndarray:
        """One draft forward (one new token per request) over `n` requests."""
        n = np.asarray(n, np.float64)
        if self.is_fixed:
            return np.where(n > 0, self.fixed_draft_step_s, 0.0)
        if self.draft is None:
            raise LapsbenchError(f"profile {self.name}: speculation k > 0 needs a draft model in the profile")
        t = self.draft.time_s(batch=n, tokens=n, context=context, tokens_sq=n, tokens_context=context)
        return np.where(n > 0, t, 0.0)

    def prefill_s(self, n: np.ndarray, tokens: np.ndarray, tokens_sq: np.ndarray, tokens_context: np.ndarray,
                  context: np.ndarray, with_draft: bool) -> np.ndarray:
        """Prefill forward of `n` requests' prompt chunks (`tokens` new tokens in total)."""
        n = np.asarray(n, np.float64)
        if self.is_fixed:
            return np.where(n > 0, self.fixed_step_s + self.fixed_prefill_s_per_token * np.asarray(tokens), 0.0)
        assert self.target_prefill is not None
        feats = dict(batch=n, tokens=tokens, tokens_sq=tokens_sq, context=context, tokens_context=tokens_context)
        t = self.target_prefill.time_s(**feats)
        if with_draft and self.draft_prefill is not None:
            t = t + self.draft_prefill.time_s(**feats)
        return np.where(n > 0, t, 0.0)


def sd_step_s(cost: CostModel, k: int, n_decode: np.ndarray, context_decode: np.ndarray,
              n_prefill: np.ndarray | None = None, prefill_tokens: np.ndarray | None = None,
              prefill_tokens_sq: np.ndarray | None = None, prefill_tokens_context: np.ndarray | None = None,
              prefill_context: np.ndarray | None = None) -> np.ndarray:
    """Time of engine steps (vectorised over steps): k draft forwards + one verify of k+1 tokens per
    decoding request, plus prefill of the requests being prefilled in the same step.

    With a fitted profile, a step that mixes prefill and decode is priced as the sum of the two forwards (an
    upper bound of a fused chunked-prefill forward; exact at batch size 1, where a step is one or the
    other). The fixed profile prices any step as one forward: step_s (+ k draft forwards if it decodes) +
    prefill_s_per_token per prompt token prefilled."""
    n_decode = np.asarray(n_decode)
    if cost.is_fixed:  # one fused forward per step, whatever it mixes
        busy = n_decode > 0
        tokens = 0.0
        if n_prefill is not None:
            busy = busy | (np.asarray(n_prefill) > 0)
            tokens = cost.fixed_prefill_s_per_token * np.asarray(prefill_tokens)
        draft = k * cost.fixed_draft_step_s if k > 0 else 0.0
        return np.where(busy, cost.fixed_step_s, 0.0) + np.where(n_decode > 0, draft, 0.0) + tokens
    t = cost.verify_s(n_decode, n_decode * (k + 1), context_decode)
    if k > 0:
        # Draft forward j sees the context plus the j draft tokens proposed so far: all k at once.
        offsets = np.arange(k).reshape((k,) + (1,) * np.ndim(n_decode))
        contexts = np.asarray(context_decode) + offsets * n_decode
        t = t + cost.draft_s(np.broadcast_to(n_decode, contexts.shape), contexts).sum(axis=0)
    if n_prefill is not None:
        t = t + cost.prefill_s(n_prefill, prefill_tokens, prefill_tokens_sq, prefill_tokens_context,
                               prefill_context, with_draft=k > 0)
    return t


# --------------------------------------------------------------------------------------------- loading

def fixed_profile(step_s: float, draft_step_s: float = 0.0, prefill_s_per_token: float = 0.0,
                  kv_capacity_tokens: int = 0) -> CostModel:
    return CostModel(name="fixed", fixed_step_s=step_s, fixed_draft_step_s=draft_step_s,
                     fixed_prefill_s_per_token=prefill_s_per_token, kv_capacity_tokens=kv_capacity_tokens)


def _phase(raw: object, where: str) -> PhaseModel:
    if not isinstance(raw, dict):
        raise LapsbenchError(f"{where}: expected a table of coefficients, got {raw!r}")
    raw = dict(raw)
    form = raw.pop("form", "linear")
    if form not in ("linear", "max", "pnorm"):
        raise LapsbenchError(f"{where}.form: {form!r} is not a model form; expected 'linear', 'max' or 'pnorm'")
    compute = raw.pop("compute", {}) if form in ("max", "pnorm") else {}
    p = 0.0
    if form == "pnorm":
        p = raw.pop("p", None)
        if not isinstance(p, (int, float)) or not math.isfinite(p) or p < 1:
            raise LapsbenchError(f"{where}.p: {p!r} is not a valid exponent; expected a number >= 1 for form 'pnorm'")
    for key in ("fit",):
        raw.pop(key, None)
    for table, label in ((raw, where), (compute, f"{where}.compute")):
        for name, value in table.items():
            if name not in FEATURES:
                raise LapsbenchError(f"{label}.{name}: unknown feature; expected one of {', '.join(FEATURES)}")
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LapsbenchError(f"{label}.{name}: {value!r} is not a finite number")
    return PhaseModel(coef={k: float(v) for k, v in raw.items()},
                      coef_compute={k: float(v) for k, v in compute.items()}, form=form, p=float(p))


def load_profile_file(path: Path, draft: str | None = None) -> CostModel:
    """Read a fitted profile TOML (see docs/profiles.md)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LapsbenchError(f"{path}: cannot read profile TOML: {exc}") from None
    models = data.get("models", {})
    target = data.get("target")
    draft = draft or data.get("draft")
    if not target or target not in models:
        raise LapsbenchError(f"{path}: 'target' must name a model under [models]; have {sorted(models)}")
    phases = models[target]
    for phase in PHASES:
        if phase not in phases:
            raise LapsbenchError(f"{path}: models.{target}.{phase} is missing")
    draft_phases = None
    if draft:
        if draft not in models:
            raise LapsbenchError(f"{path}: draft {draft!r} is not under [models]; have {sorted(models)}")
        draft_phases = models[draft]
    return CostModel(
        name=str(data.get("name", path.stem)),
        target=_phase(phases["decode"], f"{path}: models.{target}.decode"),
        target_prefill=_phase(phases["prefill"], f"{path}: models.{target}.prefill"),
        draft=_phase(draft_phases["decode"], f"{path}: models.{draft}.decode") if draft_phases else None,
        draft_prefill=(_phase(draft_phases["prefill"], f"{path}: models.{draft}.prefill")
                       if draft_phases and "prefill" in draft_phases else None),
        kv_capacity_tokens=int(data.get("kv_capacity_tokens", 0)),
        kv_bytes_per_token=float(data.get("kv_bytes_per_token", 0.0)),
        host_link_gb_s=float(data.get("host_link_gb_s", 25.0)),
        meta={"gpu": data.get("gpu", ""), "target": target, "draft": draft or "", "path": str(path)},
    )


PROFILES_ENV = "LAPSBENCH_PROFILES"


def profile_dirs() -> list[Path]:
    """Where a profile name is looked up, first match wins: the folders in $LAPSBENCH_PROFILES (separated
    by os.pathsep), `profiles/` in the current directory, the user folder (~/.config/lapsbench/profiles,
    or under $XDG_CONFIG_HOME), and the profiles shipped in the package."""
    dirs = [Path(d).expanduser() for d in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if d]
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [*dirs, Path("profiles"), config / "lapsbench" / "profiles", PROFILES_DIR]


def find_profile(name: str) -> Path:
    """The file of the profile called `name`: NAME.toml in the first of `profile_dirs()` that has it."""
    dirs = profile_dirs()
    for d in dirs:
        if (d / f"{name}.toml").is_file():
            return d / f"{name}.toml"
    known = sorted({p.stem for d in dirs for p in d.glob("*.toml")})
    raise LapsbenchError(f"model.profile: no profile {name!r} in {', '.join(str(d) for d in dirs)}; expected "
                         f"a .toml path or one of {known}")
