"""Fit cost profiles from measured step times, and check a profile against measurements.

Model forms (see docs/calibration.md for the residual evidence):
  linear  t = Σ coef·feature
  max     t = max(M, C), M = memory-bound part (const, batch, context), C = compute-bound part (all features)
  pnorm   t = (M^p + C^p)^(1/p), the smooth roofline: a forward is many kernels, each with its own knee.
All fits minimise squared *relative* error (rows span 0.1 ms to 500 ms) with non-negative coefficients (a
negative term would price a larger batch below a smaller one outside the measured grid). The form is chosen
per model and phase by 4-fold cross-validation on the training rows; the held-out rows (seeded 25%) are used
only to report the error stored in the profile.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench.calibrate.models import MODELS, LlamaConfig, parse_model_spec
from lapsbench.costmodel import FEATURES, PHASES, PhaseModel
from lapsbench.errors import LapsbenchError
from lapsbench.fsutil import atomic_file

REQUIRED = ("gpu", "model", "phase", "batch", "query_tokens", "context", "ms_median")
KEY = ("gpu", "model", "phase", "batch", "query_tokens", "context")
MEM_FEATURES = ("const", "batch", "context")
PNORM_P = (2.0, 4.0, 8.0)
MIN_ROWS = 12
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
            "tokens_context": b * q * c}
    return np.stack([cols[f] for f in FEATURES], axis=1)


# ------------------------------------------------------------------------------------------- fitting

def _nn_rel_lstsq(X: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Least squares on relative error with non-negative coefficients: drop the most negative feature and
    refit until all are ≥ 0 (a backward elimination; features are few)."""
    keep = [n for n in names if np.any(X[:, FEATURES.index(n)] != 0)]
    while keep:
        A = X[:, [FEATURES.index(n) for n in keep]] / y[:, None]
        coef, *_ = np.linalg.lstsq(A, np.ones_like(y), rcond=None)
        if (coef >= 0).all():
            return dict(zip(keep, coef.tolist(), strict=True))
        keep.pop(int(np.argmin(coef)))
    return {}


def _lin(X: np.ndarray, coef: dict[str, float]) -> np.ndarray:
    out = np.zeros(X.shape[0])
    for n, v in coef.items():
        out += v * X[:, FEATURES.index(n)]
    return out


def _fit_max(X: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], dict[str, float]] | None:
    """max(M, C): search the knee over token counts, fit each side, reassign rows to the active part."""
    tok = X[:, FEATURES.index("tokens")]
    best: tuple[float, dict[str, float], dict[str, float]] | None = None
    for thr in np.unique(tok):
        active = tok > thr
        if active.sum() < len(FEATURES) + 2 or (~active).sum() < len(MEM_FEATURES) + 2:
            continue
        for _ in range(5):
            cm = _nn_rel_lstsq(X[~active], y[~active], MEM_FEATURES)
            cc = _nn_rel_lstsq(X[active], y[active], FEATURES)
            new = _lin(X, cc) > _lin(X, cm)
            if (new == active).all() or new.sum() < len(FEATURES) + 2 or (~new).sum() < len(MEM_FEATURES) + 2:
                break
            active = new
        loss = float(np.mean((np.maximum(_lin(X, cm), _lin(X, cc)) / y - 1) ** 2))
        if best is None or loss < best[0]:
            best = (loss, cm, cc)
    return None if best is None else (best[1], best[2])


def _pnorm(M: np.ndarray, C: np.ndarray, p: float) -> np.ndarray:
    top = np.maximum(np.maximum(M, C), 1e-300)
    return top * ((M / top) ** p + (C / top) ** p) ** (1.0 / p)


def _fit_pnorm(X: np.ndarray, y: np.ndarray, p: float, init: tuple[dict[str, float], dict[str, float]]
               ) -> tuple[dict[str, float], dict[str, float]]:
    """(M^p + C^p)^(1/p) by Levenberg–Marquardt on relative error from the max-form start, coefficients ≥ 0."""
    im = [FEATURES.index(n) for n in MEM_FEATURES]
    ic = list(range(len(FEATURES)))
    th = np.array([init[0].get(n, 0.0) for n in MEM_FEATURES] + [init[1].get(n, 0.0) for n in FEATURES])
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
    keep = {n: float(v) for n, v in zip(MEM_FEATURES, th[:nm], strict=True) if v > 0}
    keep_c = {n: float(v) for n, v in zip(FEATURES, th[nm:], strict=True) if v > 0}
    return keep, keep_c


@dataclass
class Candidate:
    form: str
    coef: dict[str, float]
    compute: dict[str, float]
    p: float = 0.0

    def model(self) -> PhaseModel:
        return PhaseModel(coef=self.coef, coef_compute=self.compute, form=self.form, p=self.p)

    def predict_ms(self, X: np.ndarray) -> np.ndarray:
        return predict_ms(self.model(), X)


def predict_ms(model: PhaseModel, X: np.ndarray) -> np.ndarray:
    return model.time_s(**{f: X[:, i] for i, f in enumerate(FEATURES)}) * 1000.0


def _fit_forms(X: np.ndarray, y: np.ndarray) -> list[Candidate]:
    out = [Candidate("linear", _nn_rel_lstsq(X, y, FEATURES), {})]
    mx = _fit_max(X, y)
    if mx is not None:
        out.append(Candidate("max", mx[0], mx[1]))
        for p in PNORM_P:
            m, c = _fit_pnorm(X, y, p, mx)
            out.append(Candidate("pnorm", m, c, p))
    return out


def _label(c: Candidate) -> str:
    return f"pnorm{c.p:g}" if c.form == "pnorm" else c.form


def fit_phase(X: np.ndarray, y: np.ndarray, rng: np.random.Generator, test_frac: float
              ) -> tuple[Candidate, dict[str, Any]]:
    """Seeded train/test split; form chosen by 4-fold CV on train; refit on train; error on test."""
    n = len(y)
    idx = rng.permutation(n)
    n_test = max(1, int(round(test_frac * n))) if test_frac > 0 else 0
    test, train = idx[:n_test], idx[n_test:]
    folds = np.array_split(rng.permutation(train), 4)
    cv: dict[str, list[float]] = {}
    for k in range(4):
        va = folds[k]
        tr = np.concatenate([folds[j] for j in range(4) if j != k])
        for cand in _fit_forms(X[tr], y[tr]):
            err = np.abs(cand.predict_ms(X[va]) / y[va] - 1)
            cv.setdefault(_label(cand), []).append(float(np.mean(err ** 2)))
    scores = {k: float(np.mean(v)) for k, v in cv.items() if len(v) == 4}
    chosen_label = min(scores, key=lambda k: scores[k])
    final = {_label(c): c for c in _fit_forms(X[train], y[train])}
    chosen = final.get(chosen_label) or final["linear"]
    ape = np.abs(chosen.predict_ms(X[test]) / y[test] - 1) if n_test else np.zeros(0)
    stats = {"form": _label(chosen), "mape": round(float(ape.mean()), 5) if n_test else float("nan"),
             "max_ape": round(float(ape.max()), 5) if n_test else float("nan"), "n_train": int(len(train)),
             "n_test": int(n_test), "cv_rmsre": {k: round(math.sqrt(v), 5) for k, v in sorted(scores.items())}}
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


def render_profile(top: dict[str, Any], models: dict[str, dict[str, Candidate]],
                   fits: dict[str, dict[str, dict[str, Any]]], provenance: dict[str, Any]) -> str:
    """The profile TOML (written by hand: no TOML writer dependency)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for name, phases in models.items():
        for phase, c in phases.items():
            lines += ["", f"[models.{json.dumps(name)}.{phase}]"]
            lines.append(f"form = {json.dumps(c.form)}")
            if c.form == "pnorm":
                lines.append(f"p = {c.p!r}")
            lines += [f"{k} = {v!r}" for k, v in c.coef.items()]
            if c.form in ("max", "pnorm"):
                lines += ["", f"[models.{json.dumps(name)}.{phase}.compute]"]
                lines += [f"{k} = {v!r}" for k, v in c.compute.items()]
    for name, phases in fits.items():
        for phase, st in phases.items():
            lines += ["", f"[fit.{json.dumps(name)}.{phase}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in st.items()]
    lines += ["", "[provenance]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in provenance.items()]
    return "\n".join(lines) + "\n"


def fit_profile(measured: Path, out: Path, target: str | None, drafts: list[str], name: str | None,
                gpu: str | None, gpu_memory_gb: float | None, host_link_gb_s: float | None,
                model_configs: list[str], test_frac: float, seed: int, command: str
                ) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any]]:
    """Fit every (model, phase) of the measured file that the profile needs; write `out` atomically."""
    if not 0 <= test_frac < 1:
        raise LapsbenchError(f"--test-frac: {test_frac} must be in [0, 1)")
    df = read_measured(measured, gpu)
    sidecar_path = Path(f"{measured}.json")
    sidecar: dict[str, Any] = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
    extra = dict(parse_model_spec(s) for s in model_configs)
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
    rng = np.random.default_rng(seed)
    models: dict[str, dict[str, Candidate]] = {}
    fits: dict[str, dict[str, dict[str, Any]]] = {}
    for m in [target, *drafts]:
        needed = PHASES if m == target else ("decode",)
        for phase in PHASES:
            rows = df.filter((pl.col("model") == m) & (pl.col("phase") == phase))
            if rows.height == 0 and phase not in needed:
                continue
            if rows.height < MIN_ROWS:
                raise LapsbenchError(f"{measured}: model {m} phase {phase} has {rows.height} rows; expected at least "
                                     f"{MIN_ROWS} to fit (and hold some out)")
            X, y = features(rows), rows["ms_median"].to_numpy().astype(np.float64)
            cand, stats = fit_phase(X, y, rng, test_frac)
            models.setdefault(m, {})[phase] = cand
            fits.setdefault(m, {})[phase] = stats
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
    prov: dict[str, Any] = {
        "tool": "lapsbench calibrate fit", "fit_command": command,
        "fit_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "measured_file": measured.name, "measured_sha256": hashlib.sha256(measured.read_bytes()).hexdigest(),
        "measured_rows": df.height, "seed": seed, "test_frac": test_frac,
        "form_selection": "4-fold CV on training rows (relative RMSE) among linear, max, pnorm p=2,4,8",
        "gpu_memory_bytes": gpu_bytes, "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
        "activation_reserve_bytes": ACTIVATION_RESERVE_BYTES,
        "target_params": tcfg.params, "draft_params": dcfg.params if dcfg else 0,
    }
    for k in ("tool", "gpu", "torch", "cuda", "date", "command", "host"):
        if sidecar.get(k) is not None:
            prov[f"measure_{k}"] = sidecar[k]
    text = render_profile(top, models, fits, prov)
    with atomic_file(out) as tmp:
        tmp.write_text(text)
    return fits, top


# ------------------------------------------------------------------------------------------- check

def check_profile(profile: Path, measured: Path, gpu: str | None) -> list[dict[str, Any]]:
    """Per model and phase in both files: MAPE, worst APE and bias (mean signed relative error)."""
    from lapsbench.costmodel import _phase, tomllib

    try:
        data = tomllib.loads(profile.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LapsbenchError(f"{profile}: cannot read profile TOML: {exc}") from None
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
