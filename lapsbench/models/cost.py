"""GPU step-time model: what one engine step costs, vectorised over many steps at once.

A step of a speculative-decoding engine is `k` draft forwards plus one target forward that verifies
`k + 1` tokens for every decoding request, plus the prefill of requests admitted in that step. The
time of each forward comes from a *phase model*: a linear combination of batch features, fitted per
GPU, model and phase (`decode` or `prefill`) by `lapsbench calibrate fit`.

Features of one forward over a batch of requests, request i having `q_i` new (query) tokens and
`c_i` cached (context) tokens:

    const = 1, batch = Σ 1, tokens = Σ q_i, context = Σ c_i,
    tokens_sq = Σ q_i², tokens_context = Σ q_i·c_i,
    context_max = max c_i, batch_context_max = batch · max c_i

`context_max` and `batch_context_max` describe decode/verify forwards (0 in a prefill forward): attention
without a split-KV kernel waits for the batch's longest member. A profile may add step-level terms (`[step]`:
host overhead per decode, prefill and mixed step, an SD-step factor over the sum of the forwards, attention
per cached token of the step), fitted from an engine's step log (docs/steplog.md).

Phase-model times are in milliseconds in profile files and seconds in the API.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lapsbench.config.toml import read_toml
from lapsbench.errors import LapsbenchError
from lapsbench.resources import PROFILES_DIR

FEATURES = ("const", "batch", "tokens", "context", "tokens_sq", "tokens_context", "context_max", "batch_context_max")
PHASES = ("decode", "prefill")


@dataclass(frozen=True)
class PhaseModel:
    """t_ms = Σ coef[f]·feature[f] (form "linear"), or, for form "max", the larger of two linear parts:
    a memory-bound part (`coef`) and a compute-bound part (`coef_compute`) — the roofline knee. Form
    "pnorm" is the smooth roofline (M^p + C^p)^(1/p) of the same two parts: a forward is many kernels,
    each with its own knee, so the measured transition is gradual; p → ∞ gives "max".

    `short_below` > 0 adds the short-forward regime: a forward of fewer than `short_below` tokens costs the
    linear `short` instead (an engine that runs short prefills eagerly, not as CUDA graphs, is launch-bound
    there). `wide_from` > 0 adds the wide-batch regime: a forward over at least `wide_from` requests costs the
    linear `wide` instead (attention kernels switch strategy at a batch size: a small draft's decode forward
    on an H200 costs 2.6x more per cached token at batch 32 than at 16). Where both apply, `wide` does."""

    coef: dict[str, float]
    coef_compute: dict[str, float] = field(default_factory=dict)
    form: str = "linear"
    p: float = 0.0
    short_below: float = 0.0
    short: dict[str, float] = field(default_factory=dict)
    wide_from: float = 0.0
    wide: dict[str, float] = field(default_factory=dict)

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
        if self.short_below > 0:
            ms = np.where(np.asarray(features["tokens"], np.float64) < self.short_below, linear(self.short), ms)
        if self.wide_from > 0:
            ms = np.where(np.asarray(features["batch"], np.float64) >= self.wide_from, linear(self.wide), ms)
        return ms / 1000.0


@dataclass(frozen=True)
class StepModel:
    """Step-level terms of a profile's `[step]` table, beyond the sum of the isolated forwards (all in ms):
    t = sd_factor·(verify + drafts) + context·Σc + context_max·max c + batch_context_max·n·max c  (steps that
    decode) + prefill forwards + decode_ms | prefill_ms | mixed_ms (host overhead of a decode-only,
    prefill-only or mixed step). `k` set: the target's decode model prices a whole SD step at that k (it was
    fitted from a step log, where draft and verify forwards cannot be told apart), so only that k is priced.

    CUDA-graph padding of an engine's decode step: `batch_sizes` (ascending) — the forwards run at the smallest
    listed batch ≥ the decoding requests (beyond the last: unpadded); `span_multiple` > 0 — attention runs over
    the longest member's span, max context + k + 1, rounded up to that multiple (`context_max` and
    `batch_context_max` use it).

    Per-length prefill correction: `prefill_bucket_ms[i]` is added for each prefill chunk of i·T + 1 … (i + 1)·T
    tokens, T = `prefill_bucket_tokens` (chunks past the table: nothing). It describes an engine that pads each
    chunk to a multiple of T and whose time per padded length is off any smooth curve (GEMM tile shapes: on the
    H200 replay, a 448-token prefill is slower than a 512-token one); fitted from a step log's residuals
    (calibrate fit --prefill-bucket)."""

    k: int | None = None
    sd_factor: float = 1.0
    decode_ms: float = 0.0
    prefill_ms: float = 0.0
    mixed_ms: float = 0.0
    context: float = 0.0
    context_max: float = 0.0
    batch_context_max: float = 0.0
    batch_sizes: tuple[int, ...] = ()
    span_multiple: int = 0
    prefill_bucket_tokens: int = 0
    prefill_bucket_ms: tuple[float, ...] = ()

    def padded(self, k: int, n: np.ndarray, context_max: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(batch, span, span padded?) the decode forwards run at (integers, as given when not padded)."""
        if self.batch_sizes:
            sizes = np.asarray(self.batch_sizes, np.int64)
            i = np.searchsorted(sizes, n, side="left")
            n = np.where(n > 0, np.where(i < sizes.size, sizes[np.minimum(i, sizes.size - 1)], n), 0)
        if self.span_multiple > 0:
            m = self.span_multiple
            context_max = (context_max + (k + 1) + (m - 1)) // m * m
        return n, context_max, self.span_multiple > 0


STEP_KEYS = ("k", "sd_factor", "decode_ms", "prefill_ms", "mixed_ms", "context", "context_max", "batch_context_max",
             "batch_sizes", "span_multiple", "prefill_bucket_tokens", "prefill_bucket_ms")


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
    step: StepModel | None = None
    meta: dict = field(default_factory=dict)

    @property
    def is_fixed(self) -> bool:
        return self.fixed_step_s is not None

    def check_k(self, k: int) -> None:
        """A profile whose decode model was fitted as a whole SD step prices only that step's k."""
        if self.step is not None and self.step.k is not None and k != self.step.k:
            raise LapsbenchError(f"profile {self.name}: its decode model is a whole SD step fitted at k = "
                                 f"{self.step.k} (from a step log); speculation k = {k} needs a profile for that k")

    def verify_s(self, n: np.ndarray, query_tokens: np.ndarray, context: np.ndarray,
                 context_max: np.ndarray | None = None) -> np.ndarray:
        """One target decode/verify forward over `n` requests with `query_tokens` new tokens in total
        (`context_max`: the longest member's context; default `context`, exact at batch 1)."""
        n = np.asarray(n, np.float64)
        if self.is_fixed:
            return np.where(n > 0, self.fixed_step_s, 0.0)
        assert self.target is not None
        cmax = context if context_max is None else context_max
        t = self.target.time_s(
            batch=n, tokens=query_tokens, context=context,
            tokens_sq=np.asarray(query_tokens, np.float64) ** 2 / np.maximum(n, 1),
            tokens_context=np.asarray(query_tokens, np.float64) * np.asarray(context, np.float64)
            / np.maximum(n, 1),
            context_max=cmax, batch_context_max=n * np.asarray(cmax, np.float64),
        )
        return np.where(n > 0, t, 0.0)

    def draft_s(self, n: np.ndarray, context: np.ndarray, context_max: np.ndarray | None = None) -> np.ndarray:
        """One draft forward (one new token per request) over `n` requests."""
        n = np.asarray(n, np.float64)
        if self.is_fixed:
            return np.where(n > 0, self.fixed_draft_step_s, 0.0)
        if self.draft is None:
            raise LapsbenchError(f"profile {self.name}: speculation k > 0 needs a draft model in the profile")
        cmax = context if context_max is None else context_max
        t = self.draft.time_s(batch=n, tokens=n, context=context, tokens_sq=n, tokens_context=context,
                              context_max=cmax, batch_context_max=n * np.asarray(cmax, np.float64))
        return np.where(n > 0, t, 0.0)

    def prefill_s(self, n: np.ndarray, tokens: np.ndarray, tokens_sq: np.ndarray, tokens_context: np.ndarray,
                  context: np.ndarray, with_draft: bool) -> np.ndarray:
        """Prefill forward of `n` requests' prompt chunks (`tokens` new tokens in total)."""
        n = np.asarray(n, np.float64)
        if self.is_fixed:
            return np.where(n > 0, self.fixed_step_s + self.fixed_prefill_s_per_token * np.asarray(tokens), 0.0)
        assert self.target_prefill is not None
        feats = dict(batch=n, tokens=tokens, tokens_sq=tokens_sq, context=context, tokens_context=tokens_context,
                     context_max=0.0, batch_context_max=0.0)
        t = self.target_prefill.time_s(**feats)
        if with_draft and self.draft_prefill is not None:
            t = t + self.draft_prefill.time_s(**feats)
        return np.where(n > 0, t, 0.0)


def sd_step_s(cost: CostModel, k: int, n_decode: np.ndarray, context_decode: np.ndarray,
              n_prefill: np.ndarray | None = None, prefill_tokens: np.ndarray | None = None,
              prefill_tokens_sq: np.ndarray | None = None, prefill_tokens_context: np.ndarray | None = None,
              prefill_context: np.ndarray | None = None, context_max: np.ndarray | None = None,
              prefill_bucket_ms: np.ndarray | None = None) -> np.ndarray:
    """Time of engine steps (vectorised over steps): k draft forwards + one verify of k+1 tokens per decoding
    request, plus the prefill of the requests being prefilled in the same step, plus the profile's step-level
    terms. Priced by the compiled step pricing, the one implementation (lapsbench.models.pricing, which says
    how a step is priced); `context_max` defaults to `context_decode` (exact at batch size 1),
    `prefill_bucket_ms` (Σ of the chunks' per-length corrections) to that of a step's one chunk (0 with
    several prefills: pass it)."""
    from lapsbench.models.pricing import step_times_s  # numba: imported only when something is priced

    return step_times_s(cost, k, n_decode, context_decode, n_prefill, prefill_tokens, prefill_tokens_sq,
                        prefill_tokens_context, prefill_context, context_max, prefill_bucket_ms)


# --------------------------------------------------------------------------------------------- loading

def fixed_profile(step_s: float, draft_step_s: float = 0.0, prefill_s_per_token: float = 0.0,
                  kv_capacity_tokens: int = 0) -> CostModel:
    return CostModel(name="fixed", fixed_step_s=step_s, fixed_draft_step_s=draft_step_s,
                     fixed_prefill_s_per_token=prefill_s_per_token, kv_capacity_tokens=kv_capacity_tokens)


def _coefs(table: dict, label: str) -> dict[str, float]:
    for name, value in table.items():
        if name not in FEATURES:
            raise LapsbenchError(f"{label}.{name}: unknown feature; expected one of {', '.join(FEATURES)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise LapsbenchError(f"{label}.{name}: {value!r} is not a finite number")
    return {k: float(v) for k, v in table.items()}


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
    short = dict(raw.pop("short", {}))
    below = short.pop("below_tokens", 0.0)
    if (short or below) and (not isinstance(below, (int, float)) or not math.isfinite(below) or below <= 0):
        raise LapsbenchError(f"{where}.short.below_tokens: {below!r}; expected a number of tokens > 0")
    wide = dict(raw.pop("wide", {}))
    start = wide.pop("from_batch", 0.0)
    if (wide or start) and (not isinstance(start, (int, float)) or isinstance(start, bool)
                            or not math.isfinite(start) or start < 1):
        raise LapsbenchError(f"{where}.wide.from_batch: {start!r}; expected a batch size >= 1")
    for key in ("fit",):
        raw.pop(key, None)
    return PhaseModel(coef=_coefs(raw, where), coef_compute=_coefs(compute, f"{where}.compute"), form=form,
                      p=float(p), short_below=float(below), short=_coefs(short, f"{where}.short"),
                      wide_from=float(start), wide=_coefs(wide, f"{where}.wide"))


def _step(raw: object, where: str) -> StepModel | None:
    """The optional `[step]` table (StepModel); None when absent, so older profiles price exactly as before."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise LapsbenchError(f"{where}: expected a table, got {raw!r}")
    values: dict[str, object] = {}
    for key, value in raw.items():
        if key not in STEP_KEYS:
            raise LapsbenchError(f"{where}.{key}: unknown key; expected one of {', '.join(STEP_KEYS)}")
        if key == "batch_sizes":
            sizes = value if isinstance(value, list) else [None]
            if not sizes or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in sizes) \
                    or sorted(set(sizes)) != sizes:
                raise LapsbenchError(f"{where}.batch_sizes: {value!r}; expected ascending integers >= 1")
            values[key] = tuple(sizes)
            continue
        if key == "prefill_bucket_ms":
            ms = value if isinstance(value, list) else [None]
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in ms):
                raise LapsbenchError(f"{where}.prefill_bucket_ms: {value!r}; expected a list of finite numbers (ms)")
            values[key] = tuple(float(x) for x in ms)
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise LapsbenchError(f"{where}.{key}: {value!r} is not a finite number")
        if key in ("k", "span_multiple", "prefill_bucket_tokens"):
            if value != int(value) or value < 0:
                raise LapsbenchError(f"{where}.{key}: {value!r}; expected an integer >= 0")
            values[key] = int(value)
        else:
            values[key] = float(value)
    if values.get("prefill_bucket_ms") and int(values.get("prefill_bucket_tokens", 0)) < 1:  # type: ignore[call-overload]
        raise LapsbenchError(f"{where}.prefill_bucket_tokens: {values.get('prefill_bucket_tokens', 'missing')!r}; "
                             "prefill_bucket_ms needs the chunk length its entries step by, an integer >= 1")
    if values.get("sd_factor", 1.0) <= 0:
        raise LapsbenchError(f"{where}.sd_factor: {values['sd_factor']!r}; expected a number > 0")
    return StepModel(**values)  # type: ignore[arg-type]


def load_profile_file(path: Path, draft: str | None = None) -> CostModel:
    """Read a fitted profile TOML (see docs/profiles.md)."""
    data = read_toml(path, "profile")
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
        step=_step(data.get("step"), f"{path}: step"),
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


def find_profile(name: str, key: str = "model.profile") -> Path:
    """The file of the profile called `name`: NAME.toml in the first of `profile_dirs()` that has it (`key`: the
    scenario key that named it, for the error)."""
    dirs = profile_dirs()
    for d in dirs:
        if (d / f"{name}.toml").is_file():
            return d / f"{name}.toml"
    known = sorted({p.stem for d in dirs for p in d.glob("*.toml")})
    raise LapsbenchError(f"{key}: no profile {name!r} in {', '.join(str(d) for d in dirs)}; expected "
                         f"a .toml path or one of {known}")
