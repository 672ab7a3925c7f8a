"""Forward models fitted from measured forward times (docs/calibration.md).

Model forms (see docs/calibration.md for the residual evidence):
  linear  t = Σ coef·feature
  max     t = max(M, C), M = memory-bound part (const, batch, context), C = compute-bound part (all features)
  pnorm   t = (M^p + C^p)^(1/p), the smooth roofline: a forward is many kernels, each with its own knee.
Regimes on top of a form: a short-forward regime below a token count (step-log prefill: engines run short
prompts eagerly) and a wide-batch regime from a batch size (measured decode: attention kernels change strategy
with the batch), each a linear part fitted on its own rows.
All fits minimise squared *relative* error (rows span 0.1 ms to 500 ms) with non-negative coefficients (a
negative term would price a larger batch below a smaller one outside the measured grid). The form is chosen
per model and phase by 4-fold cross-validation on the training rows; the held-out rows (seeded 25%) are used
only to report the error stored in the profile. A phase with fewer than MIN_ROWS rows is fitted on all of them
and its form chosen and error reported by leave-one-out cross-validation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench.errors import LapsbenchError
from lapsbench.models.cost import FEATURES, PHASES, PhaseModel

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

def nn_lstsq(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, list[int]]:
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
    x, keep = nn_lstsq(X[:, cols] / y[:, None], np.ones_like(y))
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
    Xm, Xc = X[:, im], X[:, ic]  # the two parts' columns, sliced once (not in each of ~300 iterations)

    def resid(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        M = np.maximum(Xm @ t[:nm], 1e-12)
        C = np.maximum(Xc @ t[nm:], 1e-12)
        T = _pnorm(M, C, p)
        return T / y - 1, M, C, T

    r, M, C, T = resid(th)
    loss, lam = float(r @ r), 1e-3
    for _ in range(300):
        J = np.concatenate([Xm * ((M / T) ** (p - 1))[:, None], Xc * ((C / T) ** (p - 1))[:, None]], 1)
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
    wide_from: float = 0.0
    wide: dict[str, float] | None = None

    def model(self) -> PhaseModel:
        return PhaseModel(coef=self.coef, coef_compute=self.compute, form=self.form, p=self.p,
                          short_below=self.short_below, short=self.short or {}, wide_from=self.wide_from,
                          wide=self.wide or {})

    def predict_ms(self, X: np.ndarray) -> np.ndarray:
        return predict_ms(self.model(), X)


def predict_ms(model: PhaseModel, X: np.ndarray) -> np.ndarray:
    return model.time_s(**{f: X[:, i] for i, f in enumerate(FEATURES)}) * 1000.0


SHORT_FEATURES = ("const", "tokens")
SHORT_BELOW = (128, 256, 512, 1024)  # candidate token thresholds of the short-forward regime
# the wide-batch regime: linear in the batch, the cached tokens and the longest member's context (kernels that
# split the KV by sequence length pay for the longest one)
WIDE_FEATURES = ("const", "batch", "context", "context_max")
WIDE_FROM = (16, 32, 64)  # candidate batch thresholds of the wide-batch regime


def _fit_forms(X: np.ndarray, y: np.ndarray, names: tuple[str, ...] = FORWARD_FEATURES,
               short: bool = False, wide: bool = False) -> list[Candidate]:
    """Every form fitted to (X, y); with `short`, also each form above a token threshold with a linear
    (const, tokens) short-forward regime below it; with `wide`, also each form below a batch threshold with
    a linear (WIDE_FEATURES) wide-batch regime from it."""
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
    if wide:
        batch = X[:, FEATURES.index("batch")]
        for start in WIDE_FROM:
            hi = batch >= start
            if hi.sum() < len(WIDE_FEATURES) or (~hi).sum() < len(names) + 2:
                continue
            wc = _nn_rel_lstsq(X[hi], y[hi], WIDE_FEATURES)
            for cand in _fit_forms(X[~hi], y[~hi], names):
                out.append(Candidate(cand.form, cand.coef, cand.compute, cand.p, wide_from=float(start), wide=wc))
    return out


def _label(c: Candidate) -> str:
    base = f"pnorm{c.p:g}" if c.form == "pnorm" else c.form
    base = f"{base}+short{c.short_below:g}" if c.short_below > 0 else base
    return f"{base}+wide{c.wide_from:g}" if c.wide_from > 0 else base


def _stratified_folds(order: np.ndarray, batch: np.ndarray) -> list[np.ndarray]:
    """CV_FOLDS folds of the rows `order` (a seeded permutation), each with a share of every batch size:
    the rows sorted by batch (stably, so the permutation decides within a batch size) and dealt in turn. A
    regime fitted on the large batches alone then keeps rows in every fold's training part."""
    dealt = order[np.argsort(batch[order], kind="stable")]
    return [dealt[i::CV_FOLDS] for i in range(CV_FOLDS)]


def fit_phase(X: np.ndarray, y: np.ndarray, rng: np.random.Generator, test_frac: float,
              names: tuple[str, ...] = FORWARD_FEATURES, short: bool = False,
              wide: bool = False) -> tuple[Candidate, dict[str, Any]]:
    """Seeded train/test split; form chosen by 4-fold CV on train (folds stratified by batch with `wide`);
    refit on train; error on test. Fewer than MIN_ROWS rows: every row is fitted, the form is chosen and the
    error reported by leave-one-out (stats["validation"] says which)."""
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
        order = rng.permutation(train)
        # the wide-batch candidates need large-batch rows in every fold: folds stratified by batch for them
        folds = _stratified_folds(order, X[:, FEATURES.index("batch")]) if wide else np.array_split(order, CV_FOLDS)
    cv: dict[str, list[float]] = {}
    loo_ape: dict[str, list[float]] = {}
    for k in range(len(folds)):
        va = folds[k]
        tr = np.concatenate([folds[j] for j in range(len(folds)) if j != k])
        for cand in _fit_forms(X[tr], y[tr], names, short, wide):
            err = np.abs(cand.predict_ms(X[va]) / y[va] - 1)
            cv.setdefault(_label(cand), []).append(float(np.mean(err ** 2)))
            loo_ape.setdefault(_label(cand), []).extend(err.tolist())
    scores = {k: float(np.mean(v)) for k, v in cv.items() if len(v) == len(folds)}
    chosen_label = min(scores, key=lambda k: scores[k])
    final = {_label(c): c for c in _fit_forms(X[train], y[train], names, short, wide)}
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

