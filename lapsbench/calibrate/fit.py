"""Fit cost profiles from measured forward times and/or an engine's step log; check a profile against
measurements.

Model forms (see docs/calibration.md for the residual evidence):
  linear  t = Σ coef·feature
  max     t = max(M, C), M = memory-bound part (const, batch, context), C = compute-bound part (all features)
  pnorm   t = (M^p + C^p)^(1/p), the smooth roofline: a forward is many kernels, each with its own knee.
All fits minimise squared *relative* error (rows span 0.1 ms to 500 ms) with non-negative coefficients (a
negative term would price a larger batch below a smaller one outside the measured grid). The form is chosen
per model and phase by 4-fold cross-validation on the training rows; the held-out rows (seeded 25%) are used
only to report the error stored in the profile. A phase with fewer than MIN_ROWS rows is fitted on all of them
and its form chosen and error reported by leave-one-out cross-validation.

From a step log (docs/steplog.md), `fit_from_steps` fits whole engine steps (see there), and
`fit_step_terms` fits the `[step]` terms on top of forward models fitted from measurements.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench.calibrate.models import MODELS, LlamaConfig, parse_model_spec
from lapsbench.calibrate.steplog import STEP_PHASES, read_steplog, step_phase
from lapsbench.config.toml import read_toml
from lapsbench.costmodel import FEATURES, PHASES, STEP_KEYS, CostModel, PhaseModel, StepModel, sd_step_s
from lapsbench.errors import LapsbenchError
from lapsbench.fsutil import atomic_file

REQUIRED = ("gpu", "model", "phase", "batch", "query_tokens", "context", "ms_median")
KEY = ("gpu", "model", "phase", "batch", "query_tokens", "context")
FORWARD_FEATURES = FEATURES[:6]  # a measured forward has one q and c for every request: max c adds nothing
MEM_FEATURES = ("const", "batch", "context", "context_max", "batch_context_max")  # of those a form uses
PNORM_P = (2.0, 4.0, 8.0)
MIN_ROWS = 12  # fewer: fitted on every row, error by leave-one-out
MIN_LOO_ROWS = 3
CV_FOLDS = 4
KNEE_GRID = 48  # at most this many knee positions searched by the max form
MAX_FIT_ROWS = 2000  # a larger training set (a step log) is fitted on a seeded sample of this many rows
KV_BLOCK = 16
GPU_MEMORY_UTILIZATION = 0.90  # vLLM's default share of GPU memory for weights + KV cache
ACTIVATION_RESERVE_BYTES = 2 * 1024**3  # activations, CUDA graphs, workspace (within the 90%)


# ------------------------------------------------------------------------------------------- reading

def read_measured(path: Path, gpu: str | None = None) -> pl.DataFrame:
    """Measured rows (CSV or Parquet, extra columns ignored), validated; one GPU."""
    if not path.is_file():
        raise LapsbenchError(f"{path}: no such measured file; expected a CSV or Parquet file")
    try:
        df = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema_length=None)
    except Exception as exc:  # polars raises several types for malformed files
        raise LapsbenchError(f"{path}: cannot read measured file: {str(exc).splitlines()[0]}") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise LapsbenchError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(REQUIRED)}")
    if df.height == 0:
        raise LapsbenchError(f"{path}: no measured rows (only a header); expected one row per measured configuration")
    cols = [c for c in (*REQUIRED, "ms_p10", "ms_p90") if c in df.columns]
    df = df.select(cols)
    for c in ("gpu", "model", "phase"):
        df = df.with_columns(pl.col(c).cast(pl.Utf8))
        if df[c].null_count():
            raise LapsbenchError(f"{path}: column {c} has empty values; expected a name in every row")
    for c in ("batch", "query_tokens", "context", "ms_median"):
        try:
            df = df.with_columns(pl.col(c).cast(pl.Float64, strict=True))
        except Exception:
            raise LapsbenchError(f"{path}: column {c} is not numeric; expected numbers") from None
        bad = df.filter(pl.col(c).is_null() | ~pl.col(c).is_finite())
        if bad.height:
            raise LapsbenchError(f"{path}: column {c} has a missing or non-finite value; expected a finite number")
    checks = (("ms_median", pl.col("ms_median") <= 0, "> 0 ms"), ("batch", pl.col("batch") < 1, ">= 1"),
              ("query_tokens", pl.col("query_tokens") < 1, ">= 1"), ("context", pl.col("context") < 0, ">= 0"))
    for c, cond, want in checks:
        bad = df.filter(cond)
        if bad.height:
            raise LapsbenchError(f"{path}: column {c} has value {bad[c][0]:g} (model {bad['model'][0]}, "
                                 f"phase {bad['phase'][0]}); expected {want}")
    bad = df.filter(~pl.col("phase").is_in(list(PHASES)))
    if bad.height:
        raise LapsbenchError(f"{path}: column phase has value {bad['phase'][0]!r}; expected one of {', '.join(PHASES)}")
    gpus = df["gpu"].unique().sort().to_list()
    if gpu is not None:
        if gpu not in gpus:
            raise LapsbenchError(f"--gpu: {gpu!r} is not in {path}; have {gpus}")
        df = df.filter(pl.col("gpu") == gpu)
    elif len(gpus) > 1:
        raise LapsbenchError(f"{path}: column gpu has several GPUs {gpus}; pick one with --gpu")
    # Repeated configurations: identical medians are one row; different medians are contradictory input.
    dup = df.group_by(list(KEY)).agg(pl.col("ms_median").n_unique().alias("n"), pl.col("ms_median").min().alias("lo"),
                                     pl.col("ms_median").max().alias("hi")).filter(pl.col("n") > 1)
    if dup.height:
        r = dup.row(0, named=True)
        raise LapsbenchError(f"{path}: duplicate configuration model={r['model']} phase={r['phase']} "
                             f"batch={r['batch']:g} query_tokens={r['query_tokens']:g} context={r['context']:g} "
                             f"has conflicting ms_median {r['lo']:g} and {r['hi']:g}; expected one value")
    return df.unique(subset=list(KEY), keep="first", maintain_order=True).sort(list(KEY))


def features(df: pl.DataFrame) -> np.ndarray:
    """Feature matrix (rows × FEATURES) of measured rows; every request of a row has the same q and c."""
    b = df["batch"].to_numpy().astype(np.float64)
    q = df["query_tokens"].to_numpy().astype(np.float64)
    c = df["context"].to_numpy().astype(np.float64)
    cols = {"const": np.ones_like(b), "batch": b, "tokens": b * q, "context": b * c, "tokens_sq": b * q * q,
            "tokens_context": b * q * c, "context_max": c, "batch_context_max": b * c}
    return np.stack([cols[f] for f in FEATURES], axis=1)


# ------------------------------------------------------------------------------------------- fitting

def _nn_lstsq(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """min |A·x − b| with x ≥ 0: drop the most negative column and refit until all are ≥ 0 (a backward
    elimination; columns are few). Returns x (0 for dropped and all-zero columns) and the kept columns."""
    x = np.zeros(A.shape[1])
    keep = [j for j in range(A.shape[1]) if np.any(A[:, j] != 0)]
    while keep:
        coef, *_ = np.linalg.lstsq(A[:, keep], b, rcond=None)
        if (coef >= 0).all():
            x[keep] = coef
            return x, keep
        keep.pop(int(np.argmin(coef)))
    return x, keep


def _nn_rel_lstsq(X: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Least squares on relative error with non-negative coefficients, over the features a fit may use."""
    cols = [FEATURES.index(n) for n in names]
    x, keep = _nn_lstsq(X[:, cols] / y[:, None], np.ones_like(y))
    return {names[j]: float(x[j]) for j in keep}


def _lin(X: np.ndarray, coef: dict[str, float]) -> np.ndarray:
    out = np.zeros(X.shape[0])
    for n, v in coef.items():
        out += v * X[:, FEATURES.index(n)]
    return out


def _mem(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in MEM_FEATURES if n in names)


def _fit_max(X: np.ndarray, y: np.ndarray, names: tuple[str, ...]
             ) -> tuple[dict[str, float], dict[str, float]] | None:
    """max(M, C): search the knee over token counts, fit each side, reassign rows to the active part."""
    mem = _mem(names)
    tok = X[:, FEATURES.index("tokens")]
    knees = np.unique(tok)
    if knees.size > KNEE_GRID:
        knees = np.unique(np.quantile(tok, np.linspace(0, 1, KNEE_GRID)))
    best: tuple[float, dict[str, float], dict[str, float]] | None = None
    for thr in knees:
        active = tok > thr
        if active.sum() < len(names) + 2 or (~active).sum() < len(mem) + 2:
            continue
        for _ in range(5):
            cm = _nn_rel_lstsq(X[~active], y[~active], mem)
            cc = _nn_rel_lstsq(X[active], y[active], names)
            new = _lin(X, cc) > _lin(X, cm)
            if (new == active).all() or new.sum() < len(names) + 2 or (~new).sum() < len(mem) + 2:
                break
            active = new
        loss = float(np.mean((np.maximum(_lin(X, cm), _lin(X, cc)) / y - 1) ** 2))
        if best is None or loss < best[0]:
            best = (loss, cm, cc)
    return None if best is None else (best[1], best[2])


def _pnorm(M: np.ndarray, C: np.ndarray, p: float) -> np.ndarray:
    top = np.maximum(np.maximum(M, C), 1e-300)
    return top * ((M / top) ** p + (C / top) ** p) ** (1.0 / p)


def _fit_pnorm(X: np.ndarray, y: np.ndarray, p: float, init: tuple[dict[str, float], dict[str, float]],
               names: tuple[str, ...]) -> tuple[dict[str, float], dict[str, float]]:
    """(M^p + C^p)^(1/p) by Levenberg–Marquardt on relative error from the max-form start, coefficients ≥ 0."""
    mem = _mem(names)
    im = [FEATURES.index(n) for n in mem]
    ic = [FEATURES.index(n) for n in names]
    th = np.array([init[0].get(n, 0.0) for n in mem] + [init[1].get(n, 0.0) for n in names])
    th = np.maximum(th, 0.0)
    nm = len(im)

    def resid(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        M = np.maximum(X[:, im] @ t[:nm], 1e-12)
        C = np.maximum(X[:, ic] @ t[nm:], 1e-12)
        T = _pnorm(M, C, p)
        return T / y - 1, M, C, T

    r, M, C, T = resid(th)
    loss, lam = float(r @ r), 1e-3
    for _ in range(300):
        J = np.concatenate([X[:, im] * ((M / T) ** (p - 1))[:, None], X[:, ic] * ((C / T) ** (p - 1))[:, None]], 1)
        J = J / y[:, None]
        A = J.T @ J
        try:
            step = np.linalg.solve(A + lam * np.diag(np.diag(A) + 1e-12), -(J.T @ r))
        except np.linalg.LinAlgError:
            break
        cand = np.maximum(th + step, 0.0)
        nr, nM, nC, nT = resid(cand)
        nl = float(nr @ nr)
        if nl < loss:
            done = loss - nl < 1e-12 * max(loss, 1e-30)
            th, r, M, C, T, loss, lam = cand, nr, nM, nC, nT, nl, max(lam / 3, 1e-12)
            if done:
                break
        else:
            lam *= 10
            if lam > 1e10:
                break
    keep = {n: float(v) for n, v in zip(mem, th[:nm], strict=True) if v > 0}
    keep_c = {n: float(v) for n, v in zip(names, th[nm:], strict=True) if v > 0}
    return keep, keep_c


@dataclass
class Candidate:
    form: str
    coef: dict[str, float]
    compute: dict[str, float]
    p: float = 0.0
    short_below: float = 0.0
    short: dict[str, float] | None = None

    def model(self) -> PhaseModel:
        return PhaseModel(coef=self.coef, coef_compute=self.compute, form=self.form, p=self.p,
                          short_below=self.short_below, short=self.short or {})

    def predict_ms(self, X: np.ndarray) -> np.ndarray:
        return predict_ms(self.model(), X)


def predict_ms(model: PhaseModel, X: np.ndarray) -> np.ndarray:
    return model.time_s(**{f: X[:, i] for i, f in enumerate(FEATURES)}) * 1000.0


SHORT_FEATURES = ("const", "tokens")
SHORT_BELOW = (128, 256, 512, 1024)  # candidate token thresholds of the short-forward regime


def _fit_forms(X: np.ndarray, y: np.ndarray, names: tuple[str, ...] = FORWARD_FEATURES,
               short: bool = False) -> list[Candidate]:
    """Every form fitted to (X, y); with `short`, also each form above a token threshold with a linear
    (const, tokens) short-forward regime below it."""
    out = [Candidate("linear", _nn_rel_lstsq(X, y, names), {})]
    mx = _fit_max(X, y, names)
    if mx is not None:
        out.append(Candidate("max", mx[0], mx[1]))
        for p in PNORM_P:
            m, c = _fit_pnorm(X, y, p, mx, names)
            out.append(Candidate("pnorm", m, c, p))
    if short:
        tok = X[:, FEATURES.index("tokens")]
        for below in SHORT_BELOW:
            lo = tok < below
            if lo.sum() < len(SHORT_FEATURES) + 2 or (~lo).sum() < len(names) + 2:
                continue
            sc = _nn_rel_lstsq(X[lo], y[lo], SHORT_FEATURES)
            for cand in _fit_forms(X[~lo], y[~lo], names):
                out.append(Candidate(cand.form, cand.coef, cand.compute, cand.p, float(below), sc))
    return out


def _label(c: Candidate) -> str:
    base = f"pnorm{c.p:g}" if c.form == "pnorm" else c.form
    return f"{base}+short{c.short_below:g}" if c.short_below > 0 else base


def fit_phase(X: np.ndarray, y: np.ndarray, rng: np.random.Generator, test_frac: float,
              names: tuple[str, ...] = FORWARD_FEATURES, short: bool = False) -> tuple[Candidate, dict[str, Any]]:
    """Seeded train/test split; form chosen by 4-fold CV on train; refit on train; error on test.
    Fewer than MIN_ROWS rows: every row is fitted, the form is chosen and the error reported by
    leave-one-out (stats["validation"] says which)."""
    n = len(y)
    idx = rng.permutation(n)
    loo = n < MIN_ROWS
    if loo:
        test, train = np.zeros(0, np.int64), idx
        folds = [np.array([i]) for i in idx]
    else:
        n_test = max(1, int(round(test_frac * n))) if test_frac > 0 else 0
        test, train = idx[:n_test], idx[n_test:]
        if train.size > MAX_FIT_ROWS:
            train = np.sort(rng.choice(train, MAX_FIT_ROWS, replace=False))
        folds = np.array_split(rng.permutation(train), CV_FOLDS)
    cv: dict[str, list[float]] = {}
    loo_ape: dict[str, list[float]] = {}
    for k in range(len(folds)):
        va = folds[k]
        tr = np.concatenate([folds[j] for j in range(len(folds)) if j != k])
        for cand in _fit_forms(X[tr], y[tr], names, short):
            err = np.abs(cand.predict_ms(X[va]) / y[va] - 1)
            cv.setdefault(_label(cand), []).append(float(np.mean(err ** 2)))
            loo_ape.setdefault(_label(cand), []).extend(err.tolist())
    scores = {k: float(np.mean(v)) for k, v in cv.items() if len(v) == len(folds)}
    chosen_label = min(scores, key=lambda k: scores[k])
    final = {_label(c): c for c in _fit_forms(X[train], y[train], names, short)}
    if chosen_label not in final:
        chosen_label = "linear"
    chosen = final[chosen_label]
    if loo:
        ape = np.array(loo_ape[chosen_label])
    else:
        ape = np.abs(chosen.predict_ms(X[test]) / y[test] - 1) if test.size else np.zeros(0)
    stats = {"form": _label(chosen), "mape": round(float(ape.mean()), 5) if ape.size else float("nan"),
             "max_ape": round(float(ape.max()), 5) if ape.size else float("nan"), "n_train": int(len(train)),
             "n_test": int(n if loo else test.size),
             "validation": "leave-one-out" if loo else "held-out",
             "cv_rmsre": {k: round(math.sqrt(v), 5) for k, v in sorted(scores.items())}}
    return chosen, stats


# ------------------------------------------------------------------------------------------- profile

KNOWN_GPU_MEMORY_GB = {"H100 80GB": 80.0, "H100 NVL": 94.0, "H100 PCIe": 80.0, "H200": 141.0, "A100-SXM4-80GB": 80.0,
                       "A100 80GB": 80.0, "A100-SXM4-40GB": 40.0, "L40S": 48.0, "A10G": 24.0}


def _gpu_memory_bytes(gpu: str, sidecar: dict[str, Any], override_gb: float | None) -> int:
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


def _config(name: str, sidecar: dict[str, Any], extra: dict[str, LlamaConfig]) -> LlamaConfig:
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
                  if getattr(step, k) is not None and getattr(step, k) != ()]
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
    for name, phases in fits.items():
        for phase, st in phases.items():
            lines += ["", f"[fit.{json.dumps(name)}.{phase}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in st.items()]
    lines += ["", "[provenance]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in provenance.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- step logs

def _log_columns(log: pl.DataFrame) -> tuple[np.ndarray, ...]:
    """(k, n_decode, Σ context, max context, n_prefill, Σ prefill tokens, Σ prefill context, wall ms)."""
    counts = ("k", "decode_requests", "context_tokens", "context_max", "prefill_requests", "prefill_tokens",
              "prefill_context_tokens")
    return tuple(np.array(log[c].to_numpy(), np.int64) for c in counts) + (log["wall_ms"].to_numpy().astype(
        np.float64),)


def price_steps(cost: CostModel, log: pl.DataFrame, decode_only: bool = False) -> np.ndarray:
    """Every logged step priced by the simulator's own `sd_step_s`, in ms (`decode_only`: its decode part
    alone). The log has Σ prompt tokens of a step's prefills, not Σq² nor Σq·c: those are taken as if the
    chunks were equal (exact for one prefill per step)."""
    k, n, c, m, npf, tok, pc, _ = _log_columns(log)
    out = np.zeros(log.height)
    for kk in np.unique(k):
        r = k == kk
        if decode_only:
            out[r] = sd_step_s(cost, int(kk), n[r], c[r], context_max=m[r])
            continue
        per = np.maximum(npf[r], 1).astype(np.float64)
        t = tok[r].astype(np.float64)
        out[r] = sd_step_s(cost, int(kk), n[r], c[r], npf[r], tok[r], t * t / per, t * pc[r] / per, pc[r],
                           context_max=m[r])
    return out * 1000.0


def _decode_step_features(log: pl.DataFrame, pad: StepModel) -> np.ndarray:
    """Features of each step's verify forward, as `sd_step_s` forms them from (n, k, Σc, max c) and the
    engine's CUDA-graph padding (`pad`: StepModel.padded)."""
    k, n, c, m, *_ = _log_columns(log)
    n, m = pad.padded(int(k[0]) if k.size else 0, n, m)[:2] if n.size else (n, m)
    k, n, c, m = (a.astype(np.float64) for a in (k, n, c, m))
    q = n * (k + 1)
    per = np.maximum(n, 1)
    cols = {"const": np.ones_like(n), "batch": n, "tokens": q, "context": c, "tokens_sq": q * q / per,
            "tokens_context": q * c / per, "context_max": m, "batch_context_max": n * m}
    return np.stack([cols[f] for f in FEATURES], axis=1)


def _prefill_step_features(log: pl.DataFrame) -> np.ndarray:
    """Features of each step's prefill forward, as `price_steps` passes them."""
    *_, npf, tok, pc, _ = (a.astype(np.float64) for a in _log_columns(log))
    per = np.maximum(npf, 1)
    cols = {"const": np.ones_like(npf), "batch": npf, "tokens": tok, "context": pc, "tokens_sq": tok * tok / per,
            "tokens_context": tok * pc / per, "context_max": np.zeros_like(npf),
            "batch_context_max": np.zeros_like(npf)}
    return np.stack([cols[f] for f in FEATURES], axis=1)


# A decode step at one k: tokens, tokens_sq and tokens_context are multiples of batch and context.
STEP_DECODE_FEATURES = ("const", "batch", "context", "context_max", "batch_context_max")


def _split(n: int, rng: np.random.Generator, test_frac: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """(train, test, leave-one-out?) indices: a seeded split, or every row and LOO below MIN_ROWS."""
    idx = rng.permutation(n)
    if n < MIN_ROWS:
        return idx, np.zeros(0, np.int64), True
    n_test = max(1, int(round(test_frac * n))) if test_frac > 0 else 0
    return idx[n_test:], idx[:n_test], False


def _ape_stats(ape: np.ndarray, n_train: int, loo: bool, form: str) -> dict[str, Any]:
    return {"form": form, "mape": round(float(ape.mean()), 5) if ape.size else float("nan"),
            "max_ape": round(float(ape.max()), 5) if ape.size else float("nan"), "n_train": n_train,
            "n_test": int(ape.size), "validation": "leave-one-out" if loo else "held-out"}


def _fit_offset(t: np.ndarray, base: np.ndarray) -> float:
    """The constant m minimising Σ((base + m)/t − 1)²."""
    w = 1.0 / (t * t)
    return float(np.sum((t - base) * w) / np.sum(w))


def fit_from_steps(log: pl.DataFrame, path: Path, target: str, drafts: list[str], rng: np.random.Generator,
                   test_frac: float, pad: StepModel) -> tuple[dict[str, dict[str, Candidate]], StepModel,
                                                              dict[str, dict[str, Any]], dict[str, str]]:
    """A profile from a step log alone: the target's `decode` model prices a whole decode step at the log's k
    (verify + k drafts + host overhead; draft and verify forwards cannot be told apart at one k, so the draft
    models are 0 and the profile prices that k only), over batch, Σ context, max context and batch × max
    context, fitted on the decode-only steps; `prefill` prices the prefill part of a step (forms incl. the
    short-prefill regime), fitted on the prefill-only steps and on the mixed steps less their decode part and
    `mixed_ms` (alternately, three rounds: under continuous batching most prefills are in mixed steps);
    `mixed_ms` is what a mixed step costs beyond its two parts (negative when a fused forward reads the
    weights once). Forms by 4-fold CV on the training steps; errors on the held-out steps (one seeded split of
    the whole log), priced by sd_step_s. `pad`: the engine's CUDA-graph padding, kept in the profile."""
    ph = step_phase(log)
    ks = np.unique(log.filter(pl.col("decode_requests") > 0)["k"].to_numpy())
    if ks.size > 1:
        raise LapsbenchError(f"{path}: column k has values {ks.tolist()} in decode steps; a profile from a step log "
                             "alone describes one k (filter the log, or fit it together with forward measurements)")
    k = int(ks[0]) if ks.size else 0
    if k > 0 and not drafts:
        raise LapsbenchError(f"--draft: {path} has SD steps (k = {k}); name the draft model (its KV cache counts)")
    t = log["wall_ms"].to_numpy().astype(np.float64)
    train, test, loo = _split(log.height, rng, test_frac)
    if loo:
        raise LapsbenchError(f"{path}: {log.height} steps; expected at least {MIN_ROWS} to fit and hold some out")
    in_train = np.zeros(log.height, bool)
    in_train[train] = True
    step = replace(pad, k=k)
    Xd, Xp = _decode_step_features(log, step), _prefill_step_features(log)
    rows = {phase: np.flatnonzero((ph == phase) & in_train) for phase in STEP_PHASES}
    for phase in ("decode", "prefill"):
        have = rows[phase].size + (rows["mixed"].size if phase == "prefill" else 0)
        if have < MIN_LOO_ROWS:
            raise LapsbenchError(f"{path}: {have} training steps with {phase}s; expected at least {MIN_LOO_ROWS} to "
                                 f"fit the {phase} model")
    dec, dec_stats = fit_phase(Xd[rows["decode"]], t[rows["decode"]], rng, 0.0, STEP_DECODE_FEATURES) \
        if rows["decode"].size >= MIN_LOO_ROWS else (Candidate("linear", {}, {}), {"form": "none", "cv_rmsre": {}})
    dpart = np.where(log["decode_requests"].to_numpy() > 0, dec.predict_ms(Xd), 0.0)
    mixed, mixed_ms = rows["mixed"], 0.0
    for _ in range(3 if mixed.size else 1):
        rest = t[mixed] - dpart[mixed] - mixed_ms
        use = mixed[rest > 0.25 * t[mixed]]  # where the prefill is a fair share of the step
        pr = np.concatenate([rows["prefill"], use])
        y = np.concatenate([t[rows["prefill"]], t[use] - dpart[use] - mixed_ms])
        pre, pre_stats = fit_phase(Xp[pr], y, rng, 0.0, FORWARD_FEATURES, short=True)
        if mixed.size:
            mixed_ms = _fit_offset(t[mixed], dpart[mixed] + pre.predict_ms(Xp[mixed]))
    step = replace(step, mixed_ms=mixed_ms)
    models: dict[str, dict[str, Candidate]] = {target: {"decode": dec, "prefill": pre}}
    for d in drafts:
        models[d] = {"decode": Candidate("linear", {}, {})}
    cost = CostModel("fit", target=dec.model(), target_prefill=pre.model(), draft=PhaseModel(coef={}), step=step)
    ape = np.abs(price_steps(cost, log) / t - 1)
    fits: dict[str, dict[str, Any]] = {}
    labels = {"decode": dec_stats, "prefill": pre_stats, "mixed": {"form": "decode + prefill + mixed_ms"}}
    for phase in STEP_PHASES:
        if (ph == phase).any():
            held = test[ph[test] == phase]
            fits[phase] = _ape_stats(ape[held], int(rows[phase].size), False, labels[phase]["form"])
            if "cv_rmsre" in labels[phase]:
                fits[phase]["cv_rmsre"] = labels[phase]["cv_rmsre"]
    notes = {d: f"a draft forward is part of {target}.decode (a whole SD step at k = {k}, fitted from a step log)"
             for d in drafts}
    return models, step, fits, notes


STEP_TERM_SETS = {  # [step] terms fitted on top of forward models, chosen by CV
    "overhead": ("decode_ms", "prefill_ms", "mixed_ms"),
    "overhead+factor": ("sd_factor", "decode_ms", "prefill_ms", "mixed_ms"),
    "overhead+factor+attention": ("sd_factor", "decode_ms", "prefill_ms", "mixed_ms", "context", "context_max",
                                  "batch_context_max"),
}


def _step_term_columns(cost: CostModel, log: pl.DataFrame) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Column per [step] term (ms per unit of the term) and the part priced without them (ms); `cost.step`
    holds only the engine's padding."""
    k, n, c, m, npf, *_ = _log_columns(log)
    if cost.step is not None:
        for kk in np.unique(k):
            r = k == kk
            n[r], m[r] = cost.step.padded(int(kk), n[r], m[r])[:2]
    n, c, m, npf = (a.astype(np.float64) for a in (n, c, m, npf))
    dec_part = price_steps(cost, log, decode_only=True)
    whole = price_steps(cost, log)
    dec, pf = n > 0, npf > 0
    cols = {"sd_factor": dec_part, "decode_ms": (dec & ~pf).astype(float), "prefill_ms": (pf & ~dec).astype(float),
            "mixed_ms": (dec & pf).astype(float), "context": c, "context_max": m, "batch_context_max": n * m}
    return cols, whole


def _fit_terms(cols: dict[str, np.ndarray], whole: np.ndarray, t: np.ndarray, terms: tuple[str, ...]
               ) -> dict[str, float]:
    """Non-negative [step] terms minimising relative error; without sd_factor the forwards count once."""
    offset = whole - cols["sd_factor"] if "sd_factor" in terms else whole  # the forwards, as measured
    A = np.stack([cols[name] for name in terms], axis=1) / t[:, None]
    x, _ = _nn_lstsq(A, 1.0 - offset / t)
    return dict(zip(terms, x.tolist(), strict=True))


def fit_step_terms(cost: CostModel, log: pl.DataFrame, rng: np.random.Generator, test_frac: float,
                   pad: StepModel) -> tuple[StepModel, dict[str, dict[str, Any]]]:
    """The [step] terms on top of forward models (fitted from measurements) from a step log: the term set by
    4-fold CV on the training steps, the error per step phase on the held-out steps, priced by sd_step_s."""
    t = log["wall_ms"].to_numpy().astype(np.float64)
    cost = replace(cost, step=pad)
    cols, whole = _step_term_columns(cost, log)
    train, test, loo = _split(log.height, rng, test_frac)
    if loo:
        raise LapsbenchError(f"step log: {log.height} steps; expected at least {MIN_ROWS} to fit [step] terms")
    folds = np.array_split(rng.permutation(train), CV_FOLDS)
    scores: dict[str, float] = {}
    for label, terms in STEP_TERM_SETS.items():
        errs = []
        for j in range(CV_FOLDS):
            tr = np.concatenate([folds[i] for i in range(CV_FOLDS) if i != j])
            va = folds[j]
            x = _fit_terms({k: v[tr] for k, v in cols.items()}, whole[tr], t[tr], terms)
            ok = x.get("sd_factor", 1.0) > 0  # a factor of 0 would drop the forwards: not a model of them
            errs.append(float(np.mean((_term_price(cols, whole, x, va) / t[va] - 1) ** 2)) if ok else math.inf)
        scores[label] = float(np.mean(errs))
    label = min(scores, key=lambda s_: scores[s_])
    x = _fit_terms({k: v[train] for k, v in cols.items()}, whole[train], t[train], STEP_TERM_SETS[label])
    step = replace(pad, **{"sd_factor": 1.0, **x})
    priced = price_steps(replace(cost, step=step), log)
    ph = step_phase(log)
    fits: dict[str, dict[str, Any]] = {}
    for phase in STEP_PHASES:
        rows = test[ph[test] == phase]
        if (ph == phase).any():
            fits[phase] = _ape_stats(np.abs(priced[rows] / t[rows] - 1), int((ph[train] == phase).sum()), False,
                                     label)
            fits[phase]["cv_rmsre"] = {k: round(math.sqrt(v), 5) for k, v in sorted(scores.items())}
    return step, fits


def _term_price(cols: dict[str, np.ndarray], whole: np.ndarray, x: dict[str, float], rows: np.ndarray) -> np.ndarray:
    """Price (ms) of `rows` with [step] terms x, in the terms' linear form (what `_fit_terms` fits)."""
    out = whole[rows].copy()
    if "sd_factor" in x:
        out += (x["sd_factor"] - 1.0) * cols["sd_factor"][rows]
    for name, v in x.items():
        if name != "sd_factor":
            out += v * cols[name][rows]
    return out


def _gpu_of_steps(path: Path, gpu: str | None) -> str:
    """The GPU a step log was taken on: --gpu, else `replay.gpu` (or `gpu`) in the meta.json beside it (a
    replay's results directory)."""
    if gpu:
        return gpu
    meta = path.parent / "meta.json"
    if meta.is_file():
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            data = {}
        replay = data.get("replay") if isinstance(data, dict) else None
        value = (replay.get("gpu") if isinstance(replay, dict) else None) or data.get("gpu")
        if isinstance(value, str) and value and value != "cpu":
            return value
    raise LapsbenchError(f"--gpu: {path} has no meta.json naming its GPU; name the GPU the step log was taken on")


def fit_profile(measured: Path | None, out: Path, target: str | None, drafts: list[str], name: str | None,
                gpu: str | None, gpu_memory_gb: float | None, host_link_gb_s: float | None,
                model_configs: list[str], test_frac: float, seed: int, command: str,
                steps: Path | list[Path] | None = None,
                batch_sizes: tuple[int, ...] = (), span_multiple: int = 0
                ) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any]]:
    """Fit the profile from forward measurements (every (model, phase) it needs), from a step log
    (`fit_from_steps`), or both (forward models, then the [step] terms from the log: `fit_step_terms`);
    write `out` atomically. Step-level errors are under fits[STEP_LOG]. `batch_sizes`, `span_multiple`: the
    engine's CUDA-graph padding of decode steps (StepModel), for a step log. Several step logs (of one engine,
    e.g. batch-1 and batched runs) are fitted together."""
    if not 0 <= test_frac < 1:
        raise LapsbenchError(f"--test-frac: {test_frac} must be in [0, 1)")
    step_files = [steps] if isinstance(steps, Path) else list(steps or [])
    steps = step_files[0] if step_files else None
    if measured is None and steps is None:
        raise LapsbenchError("calibrate fit: give a measured file, --steps STEPS, or both")
    if (batch_sizes or span_multiple) and steps is None:
        raise LapsbenchError("--batch-sizes/--span-multiple: describe a step log's engine; give --steps")
    if list(batch_sizes) != sorted(set(batch_sizes)) or any(b < 1 for b in batch_sizes):
        raise LapsbenchError(f"--batch-sizes: {list(batch_sizes)}; expected ascending integers >= 1")
    if span_multiple < 0:
        raise LapsbenchError(f"--span-multiple: {span_multiple}; expected an integer >= 0")
    pad = StepModel(batch_sizes=tuple(batch_sizes), span_multiple=span_multiple)
    log = pl.concat([read_steplog(f) for f in step_files], how="diagonal") if step_files else None
    where = steps if len(step_files) == 1 else Path(", ".join(str(f) for f in step_files))
    df = read_measured(measured, gpu) if measured is not None else None
    sidecar: dict[str, Any] = {}
    if measured is not None:
        sidecar_path = Path(f"{measured}.json")
        sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
    extra = dict(parse_model_spec(s) for s in model_configs)
    rng = np.random.default_rng(seed)
    models: dict[str, dict[str, Candidate]] = {}
    fits: dict[str, dict[str, dict[str, Any]]] = {}
    step: StepModel | None = None
    notes: dict[str, str] = {}
    if df is not None:
        assert measured is not None
        have = df["model"].unique().sort().to_list()
        if target is None:
            sizes = {m: _config(m, sidecar, extra).params for m in have}
            target = max(have, key=lambda m: sizes[m])
        if target not in have:
            raise LapsbenchError(f"--target: {target!r} has no rows in {measured}; have {have}")
        for d in drafts:
            if d not in have:
                raise LapsbenchError(f"--draft: {d!r} has no rows in {measured}; have {have}")
        gpu_name = df["gpu"][0]
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
                cand, stats = fit_phase(X, y, rng, test_frac)
                models.setdefault(m, {})[phase] = cand
                fits.setdefault(m, {})[phase] = stats
        if log is not None:
            cost = CostModel("fit", target=models[target]["decode"].model(),
                             target_prefill=models[target]["prefill"].model(),
                             draft=models[drafts[0]]["decode"].model() if drafts else None,
                             draft_prefill=models[drafts[0]]["prefill"].model()
                             if drafts and "prefill" in models[drafts[0]] else None)
            if (log["k"].to_numpy() > 0).any() and not drafts:
                raise LapsbenchError(f"--draft: {where} has SD steps (k > 0); name the draft model")
            step, fits[STEP_LOG] = fit_step_terms(cost, log, rng, test_frac, pad)
    else:
        assert log is not None and steps is not None
        if target is None:
            raise LapsbenchError("--target: name the target model of the step log (for its KV cache and shape)")
        gpu_name = _gpu_of_steps(steps, gpu)
        models, step, fits[STEP_LOG], notes = fit_from_steps(log, where, target, drafts, rng, test_frac, pad)
    tcfg = _config(target, sidecar, extra)
    dcfg = _config(drafts[0], sidecar, extra) if drafts else None
    gpu_bytes = _gpu_memory_bytes(gpu_name, sidecar, gpu_memory_gb)
    top: dict[str, Any] = {
        "name": name or out.stem, "gpu": gpu_name, "target": target}
    if drafts:
        top["draft"] = drafts[0]
    top["kv_capacity_tokens"] = kv_capacity_tokens(gpu_bytes, tcfg, dcfg)
    top["kv_bytes_per_token"] = tcfg.kv_bytes_per_token
    top["host_link_gb_s"] = float(host_link_gb_s or sidecar.get("host_link_gb_s") or 25.0)
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
    text = render_profile(top, models, fits, prov, step, notes)
    with atomic_file(out) as tmp:
        tmp.write_text(text)
    return fits, top


# ------------------------------------------------------------------------------------------- check

def check_profile(profile: Path, measured: Path, gpu: str | None) -> list[dict[str, Any]]:
    """Per model and phase in both files: MAPE, worst APE and bias (mean signed relative error)."""
    from lapsbench.costmodel import _phase

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
