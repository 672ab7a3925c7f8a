"""Fits from an engine's step log (docs/steplog.md): `fit_from_steps` fits whole engine steps, and
`fit_step_terms` fits the `[step]` terms on top of forward models fitted from measurements."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench.calibrate.forward import (
    CV_FOLDS,
    MIN_LOO_ROWS,
    MIN_ROWS,
    Candidate,
    fit_phase,
    nn_lstsq,
)
from lapsbench.calibrate.steplog import CHUNKS, STEP_PHASES, step_phase
from lapsbench.errors import LapsbenchError
from lapsbench.models.cost import FEATURES, CostModel, PhaseModel, StepModel, sd_step_s


def _log_columns(log: pl.DataFrame) -> tuple[np.ndarray, ...]:
    """(k, n_decode, Σ context, max context, n_prefill, Σ prefill tokens, Σ prefill context, wall ms)."""
    counts = ("k", "decode_requests", "context_tokens", "context_max", "prefill_requests", "prefill_tokens",
              "prefill_context_tokens")
    return tuple(np.array(log[c].to_numpy(), np.int64) for c in counts) + (log["wall_ms"].to_numpy().astype(
        np.float64),)


def chunk_sums(log: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(Σ chunk², Σ chunk × tokens cached before it) of each step's prefills, as float64: the logged sums
    (prefill_tokens_sq, prefill_tokens_context), or where a row has none, those of equal chunks (T²/n, T·C/n;
    exact for one prefill per step, e.g. at batch 1)."""
    n = np.maximum(log["prefill_requests"].to_numpy(), 1).astype(np.float64)
    tok = log["prefill_tokens"].to_numpy().astype(np.float64)
    ctx = log["prefill_context_tokens"].to_numpy().astype(np.float64)
    out = []
    for name, equal in (("prefill_tokens_sq", tok * tok / n), ("prefill_tokens_context", tok * ctx / n)):
        logged = log[name].cast(pl.Float64).to_numpy() if name in log.columns else np.full(log.height, np.nan)
        out.append(np.where(np.isnan(logged), equal, logged))
    return out[0], out[1]


def _logged_chunks(log: pl.DataFrame) -> np.ndarray:
    """Rows with prefill_chunks logged."""
    return log[CHUNKS].is_not_null().to_numpy() if CHUNKS in log.columns else np.zeros(log.height, bool)


def known_chunks(log: pl.DataFrame) -> np.ndarray:
    """Rows whose every prefill chunk is known: logged (prefill_chunks), or at most one prefill."""
    return _logged_chunks(log) | (log["prefill_requests"].to_numpy() <= 1)


def _chunk_rows(log: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(row, tokens) of every known prefill chunk (`known_chunks`): the logged chunks, or a row's one prefill."""
    logged = _logged_chunks(log)
    one = np.flatnonzero(~logged & (log["prefill_requests"].to_numpy() == 1))
    rows, chunks = [one], [log["prefill_tokens"].to_numpy().astype(np.int64)[one]]
    if logged.any():
        part = log.select(pl.int_range(pl.len()).alias("_row"), pl.col(CHUNKS)).filter(pl.col(CHUNKS).is_not_null())
        part = part.explode(CHUNKS).drop_nulls()
        rows.append(part["_row"].to_numpy().astype(np.int64))
        chunks.append(part[CHUNKS].to_numpy().astype(np.int64))
    return np.concatenate(rows), np.concatenate(chunks)


def bucket_sums(cost: CostModel, log: pl.DataFrame) -> np.ndarray:
    """Σ over each step's prefill chunks of the profile's per-length correction, ms: 0 without a [step]
    prefill_bucket_ms table, and for a step of several prefills whose chunks are not logged (the table is not
    smooth, so equal chunks would be a guess; such a step is priced by the smooth model alone)."""
    st = cost.step
    if st is None or not st.prefill_bucket_ms or cost.is_fixed:
        return np.zeros(log.height)
    return _table_sums(log, st.prefill_bucket_tokens, st.prefill_bucket_ms)


def _table_sums(log: pl.DataFrame, bucket_tokens: int, table: tuple[float, ...]) -> np.ndarray:
    from lapsbench.models.pricing import bucket_ms_of_chunks  # numba: only when something is priced

    out = np.zeros(log.height)
    rows, chunks = _chunk_rows(log)
    np.add.at(out, rows, bucket_ms_of_chunks(bucket_tokens, table, chunks))
    return out


def price_steps(cost: CostModel, log: pl.DataFrame, decode_only: bool = False) -> np.ndarray:
    """Every logged step priced by the simulator's own `sd_step_s`, in ms (`decode_only`: its decode part
    alone), with the prefills' chunk sums of `chunk_sums` and per-length corrections of `bucket_sums`."""
    k, n, c, m, npf, tok, pc, _ = _log_columns(log)
    sq, tc = chunk_sums(log)
    bucket = bucket_sums(cost, log)
    out = np.zeros(log.height)
    for kk in np.unique(k):
        r = k == kk
        if decode_only:
            out[r] = sd_step_s(cost, int(kk), n[r], c[r], context_max=m[r])
            continue
        out[r] = sd_step_s(cost, int(kk), n[r], c[r], npf[r], tok[r], sq[r], tc[r], pc[r], context_max=m[r],
                           prefill_bucket_ms=bucket[r])
    return out * 1000.0


def fit_bucket_table(log: pl.DataFrame, residual_ms: np.ndarray, t: np.ndarray, rows: np.ndarray,
                     bucket_tokens: int) -> tuple[float, ...]:
    """[step] prefill_bucket_ms: the correction per padded chunk length (multiples of `bucket_tokens`) that
    best explains `residual_ms` (measured − priced without it) of the steps `rows` whose chunks are known, each
    step's residual the sum of its chunks' entries. Least squares in relative error, each entry shrunk toward 0
    as by one more step of median weight with no residual: a length seen once gets half its residual, one seen
    n times n/(n+1); lengths never seen get 0 (the smooth prefill model alone)."""
    chunk_row, chunks = _chunk_rows(log)
    rows = np.sort(rows[known_chunks(log)[rows] & (log["prefill_requests"].to_numpy()[rows] > 0)])
    if rows.size == 0:
        return ()
    keep = np.isin(chunk_row, rows)
    chunk_row, idx = chunk_row[keep], (chunks[keep] + bucket_tokens - 1) // bucket_tokens - 1
    width = int(idx.max()) + 1
    where = np.searchsorted(rows, chunk_row)
    A = np.zeros((rows.size, width))
    np.add.at(A, (where, idx), 1.0)
    w = 1.0 / t[rows]
    Aw, yw = A * w[:, None], residual_ms[rows] * w
    lam = float(np.median(w * w))
    table = np.linalg.solve(Aw.T @ Aw + lam * np.eye(width), Aw.T @ yw)
    table[A.sum(axis=0) == 0] = 0.0
    return tuple(round(float(x), 4) for x in table)


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
    sq, tc = chunk_sums(log)
    cols = {"const": np.ones_like(npf), "batch": npf, "tokens": tok, "context": pc, "tokens_sq": sq,
            "tokens_context": tc, "context_max": np.zeros_like(npf),
            "batch_context_max": np.zeros_like(npf)}
    return np.stack([cols[f] for f in FEATURES], axis=1)


# A decode step at one k: tokens, tokens_sq and tokens_context are multiples of batch and context.
STEP_DECODE_FEATURES = ("const", "batch", "context", "context_max", "batch_context_max")
# A step's prefill chunks: what a chunk after cached tokens adds is its attention over them, chunk × cached
# (tokens_context); Σ cached alone (context) costs only the read of their KV, a few µs per thousand tokens. With
# both, a window with few chunked steps (a handful under continuous batching) charges the cached tokens by
# themselves, tens of µs each (fitted on calib-cb64: 36 µs), and prices a chunk after 3,000 cached tokens 38-66%
# high (docs/validation.md §0.9).
STEP_PREFILL_FEATURES = ("const", "batch", "tokens", "tokens_sq", "tokens_context")


def _split(n: int, rng: np.random.Generator, test_frac: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """(train, test, leave-one-out?) indices: a seeded split, or every row and LOO below MIN_ROWS."""
    idx = rng.permutation(n)
    if n < MIN_ROWS:
        return idx, np.zeros(0, np.int64), True
    n_test = max(1, int(round(test_frac * n))) if test_frac > 0 else 0
    return idx[n_test:], idx[:n_test], False


def _ape_stats(ape: np.ndarray, n_train: int, loo: bool, form: str) -> dict[str, Any]:
    """A phase's error; with no held-out step of it (a phase of one or two steps in the log: under continuous
    batching nearly every prefill shares its step with decodes), validation = "none held out" and NaN errors."""
    validation = "leave-one-out" if loo else "held-out" if ape.size else "none held out"
    return {"form": form, "mape": round(float(ape.mean()), 5) if ape.size else float("nan"),
            "max_ape": round(float(ape.max()), 5) if ape.size else float("nan"), "n_train": n_train,
            "n_test": int(ape.size), "validation": validation}


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
        pre, pre_stats = fit_phase(Xp[pr], y, rng, 0.0, STEP_PREFILL_FEATURES, short=True)
        if mixed.size:
            mixed_ms = _fit_offset(t[mixed], dpart[mixed] + pre.predict_ms(Xp[mixed]))
    T, table = step.prefill_bucket_tokens, ()
    if T:  # what the smooth models leave of the steps that prefill, per padded chunk length (after, not with
        # them: a free table also spans smooth per-chunk terms, and fitted alternately the two trade places)
        smooth = dpart + pre.predict_ms(Xp) + np.where(ph == "mixed", mixed_ms, 0.0)
        table = fit_bucket_table(log, t - smooth, t, np.concatenate([rows["prefill"], mixed]), T)
    step = replace(step, mixed_ms=mixed_ms, prefill_bucket_ms=table)
    models: dict[str, dict[str, Candidate]] = {target: {"decode": dec, "prefill": pre}}
    for d in drafts:
        models[d] = {"decode": Candidate("linear", {}, {})}
    cost = CostModel("fit", target=dec.model(), target_prefill=pre.model(), draft=PhaseModel(coef={}), step=step)
    ape = np.abs(price_steps(cost, log) / t - 1)
    fits: dict[str, dict[str, Any]] = {}
    by_length = f" + per {T} tokens" if table else ""  # the per-length table's part of the form
    labels = {"decode": dec_stats, "prefill": {**pre_stats, "form": pre_stats["form"] + by_length},
              "mixed": {"form": "decode + prefill + mixed_ms" + by_length}}
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
    x, _ = nn_lstsq(A, 1.0 - offset / t)
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
    if pad.prefill_bucket_tokens:  # each chunk's padded length: what the forwards and terms leave
        table = fit_bucket_table(log, t - priced, t, train[ph[train] != "decode"], pad.prefill_bucket_tokens)
        step = replace(step, prefill_bucket_ms=table)
        priced = price_steps(replace(cost, step=step), log)
    by_length = f" + per {pad.prefill_bucket_tokens} tokens" if step.prefill_bucket_ms else ""  # steps that prefill
    fits: dict[str, dict[str, Any]] = {}
    for phase in STEP_PHASES:
        rows = test[ph[test] == phase]
        if (ph == phase).any():
            fits[phase] = _ape_stats(np.abs(priced[rows] / t[rows] - 1), int((ph[train] == phase).sum()), False,
                                     label + (by_length if phase != "decode" else ""))
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


def gpu_of_steps(path: Path, gpu: str | None) -> str:
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

