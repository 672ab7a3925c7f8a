"""Step log v1 (docs/steplog.md): one row per executed engine step, as `lapsbench replay` writes it and as
another engine's per-iteration log can be converted to. Read and validated here, before any fitting.

A bad log gives one line naming the file, the column, the first bad row (0-based, header excluded) and its
value, and what is expected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.errors import LapsbenchError

VERSION = "1"
METADATA_KEY = "lapsbench.steplog"
INT_COLUMNS = ("k", "decode_requests", "context_tokens", "context_max", "prefill_requests", "prefill_tokens",
               "prefill_context_tokens")
REQUIRED = ("start_s", "wall_ms", *INT_COLUMNS)
CHUNK_COLUMNS = ("prefill_tokens_sq", "prefill_tokens_context")  # Σ chunk², Σ chunk × tokens cached before it
CHUNKS = "prefill_chunks"  # each chunk's tokens: a list (Parquet), or integers separated by spaces (CSV)
OPTIONAL = ("scheduler", "replication", "step", "gpu_ms", *CHUNK_COLUMNS, CHUNKS, "emitted_tokens")
STEP_PHASES = ("decode", "prefill", "mixed")  # decode-only, prefill-only and mixed steps


def step_phase(log: pl.DataFrame) -> np.ndarray:
    """'decode', 'prefill' or 'mixed' per row."""
    dec = log["decode_requests"].to_numpy() > 0
    pf = log["prefill_requests"].to_numpy() > 0
    return np.where(dec & pf, "mixed", np.where(dec, "decode", "prefill"))


def _read(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise LapsbenchError(f"{path}: no such step log; expected a Parquet or CSV file (docs/steplog.md)")
    try:
        if path.suffix == ".parquet":
            version = pl.read_parquet_metadata(path).get(METADATA_KEY)
            if version is not None and version != VERSION:
                raise LapsbenchError(f"{path}: metadata {METADATA_KEY} = {version!r}; this lapsbench reads step log "
                                     f"version {VERSION!r}")
            return pl.read_parquet(path)
        return pl.read_csv(path, infer_schema_length=None)
    except LapsbenchError:
        raise
    except Exception as exc:  # polars / pyarrow raise several types for malformed files
        raise LapsbenchError(f"{path}: cannot read step log: {str(exc).splitlines()[0]}") from None


def _first_bad(path: Path, log: pl.DataFrame, bad: pl.Series, column: str, want: str) -> None:
    rows = np.flatnonzero(bad.fill_null(True).to_numpy())
    if rows.size:
        r = int(rows[0])
        raise LapsbenchError(f"{path}: column {column} row {r} has value {log[column][r]!r}; expected {want}")


def read_steplog(path: Path) -> pl.DataFrame:
    """The validated step log: required columns as float64 (times) and int64 (counts), `scheduler` (str),
    `replication` (int64) and `step` (int64, default: the row's order within its run) always present, the
    chunk sums (CHUNK_COLUMNS, int64) and the chunks (CHUNKS, list of int64) always present and null where not
    logged, `gpu_ms` and `emitted_tokens` kept when given."""
    df = _read(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise LapsbenchError(f"{path}: missing column(s) {', '.join(missing)}; a step log needs "
                             f"{', '.join(REQUIRED)} (docs/steplog.md)")
    if df.height == 0:
        raise LapsbenchError(f"{path}: no rows; expected one row per engine step")
    raw = df
    cols: list[pl.Series] = []
    for c in ("start_s", "wall_ms", "gpu_ms"):
        if c in df.columns:
            cast = df[c].cast(pl.Float64, strict=False)
            _first_bad(path, raw, cast.is_null() & raw[c].is_not_null(), c, "a number")
            cols.append(cast.alias(c))
    for c in (*INT_COLUMNS, *CHUNK_COLUMNS, "replication", "step", "emitted_tokens"):
        if c in df.columns:
            cast = df[c].cast(pl.Float64, strict=False)
            _first_bad(path, raw, cast.is_null() & raw[c].is_not_null(), c, "an integer")
            _first_bad(path, raw, cast.is_not_null() & (cast != cast.round()), c, "an integer")
            cols.append(cast.alias(c))
    log = df.with_columns(cols)
    for c in REQUIRED:
        _first_bad(path, raw, log[c].is_null() | ~log[c].is_finite(), c, "a finite number in every row")
    if "gpu_ms" in log.columns:
        _first_bad(path, raw, ~log["gpu_ms"].is_finite().fill_null(True), "gpu_ms", "a finite number or empty")
        _first_bad(path, raw, (log["gpu_ms"] <= 0).fill_null(False), "gpu_ms", "> 0 ms (or empty)")
    _first_bad(path, raw, log["wall_ms"] <= 0, "wall_ms", "> 0 ms")
    _first_bad(path, raw, log["start_s"] < 0, "start_s", ">= 0 s")
    for c in (*INT_COLUMNS, *CHUNK_COLUMNS, "replication", "emitted_tokens"):
        if c in log.columns:
            _first_bad(path, raw, (log[c] < 0).fill_null(False), c, "a count >= 0")
    log = log.with_columns([pl.col(c).cast(pl.Int64) for c in (*INT_COLUMNS, *CHUNK_COLUMNS, "replication", "step",
                                                               "emitted_tokens") if c in log.columns])
    dec, pf = log["decode_requests"], log["prefill_requests"]
    _first_bad(path, raw, (dec + pf) < 1, "decode_requests",
               "decode_requests + prefill_requests >= 1 (a step serves at least one request)")
    _first_bad(path, raw, (pf > 0) != (log["prefill_tokens"] > 0), "prefill_tokens",
               "> 0 exactly when prefill_requests > 0")
    _first_bad(path, raw, log["prefill_tokens"] < pf, "prefill_tokens", ">= prefill_requests (a chunk has a token)")
    _first_bad(path, raw, (pf == 0) & (log["prefill_context_tokens"] > 0), "prefill_context_tokens",
               "0 when prefill_requests is 0")
    _first_bad(path, raw, log["context_max"] > log["context_tokens"], "context_max", "<= context_tokens")
    _first_bad(path, raw, (dec == 0) & (log["context_tokens"] > 0), "context_tokens", "0 when decode_requests is 0")
    _first_bad(path, raw, log["context_max"] * dec < log["context_tokens"], "context_max",
               ">= context_tokens / decode_requests (the longest context is at least the mean)")
    _check_chunk_sums(path, raw, log)
    log = _chunks(path, raw, log)
    if "scheduler" not in log.columns:
        log = log.with_columns(pl.lit("").alias("scheduler"))
    if "replication" not in log.columns:
        log = log.with_columns(pl.lit(0, pl.Int64).alias("replication"))
    log = log.with_columns(pl.col("scheduler").cast(pl.Utf8).fill_null(""))
    if "step" not in log.columns:
        log = log.with_columns(pl.int_range(pl.len()).over("scheduler", "replication").cast(pl.Int64).alias("step"))
    back = log.with_row_index("_row").with_columns(
        (pl.col("start_s").diff().over("scheduler", "replication") < 0).fill_null(False).alias("_back"))
    _first_bad(path, raw, back["_back"], "start_s", "non-decreasing within a (scheduler, replication) run")
    log = log.with_columns([pl.lit(None, pl.Int64).alias(c) for c in CHUNK_COLUMNS if c not in log.columns])
    keep = ["scheduler", "replication", "step", *REQUIRED, *CHUNK_COLUMNS, CHUNKS] + [
        c for c in ("gpu_ms", "emitted_tokens") if c in log.columns]
    return log.select(keep)


def _check_chunk_sums(path: Path, raw: pl.DataFrame, log: pl.DataFrame) -> None:
    """The chunk sums, where given, are those of some chunks: n chunks of Σ tokens T have T²/n <= Σ chunk² <=
    T², and with Σ cached C (each chunk at least one token), C <= Σ chunk × cached <= T·C."""
    n, tok, ctx = log["prefill_requests"], log["prefill_tokens"], log["prefill_context_tokens"]
    if "prefill_tokens_sq" in log.columns:
        sq = log["prefill_tokens_sq"]
        _first_bad(path, raw, ((n == 0) & (sq > 0)).fill_null(False), "prefill_tokens_sq",
                   "0 when prefill_requests is 0")
        _first_bad(path, raw, ((n > 0) & ((sq * n < tok * tok) | (sq > tok * tok))).fill_null(False),
                   "prefill_tokens_sq", "between prefill_tokens² / prefill_requests and prefill_tokens² "
                   "(the sum of the chunks' squares)")
    if "prefill_tokens_context" in log.columns:
        tc = log["prefill_tokens_context"]
        _first_bad(path, raw, ((tc < ctx) | (tc > tok * ctx)).fill_null(False), "prefill_tokens_context",
                   "between prefill_context_tokens and prefill_tokens × prefill_context_tokens (Σ chunk × tokens "
                   "cached before it)")


def _chunks(path: Path, raw: pl.DataFrame, log: pl.DataFrame) -> pl.DataFrame:
    """`prefill_chunks` as a list of int64 per row (null where not logged), checked against the row's counts and
    sums: one chunk per prefill request, each of at least one token, summing to prefill_tokens (and their
    squares to prefill_tokens_sq, where logged)."""
    if CHUNKS not in log.columns:
        return log.with_columns(pl.lit(None, pl.List(pl.Int64)).alias(CHUNKS))
    col = log[CHUNKS]
    if col.dtype.is_integer():  # CSV whose every step has at most one chunk: read as integers
        col = col.cast(pl.String)
    if col.dtype == pl.String:  # CSV: "458 1024"; empty for a step with no prefill
        parts = col.str.strip_chars().str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
        parsed = parts.list.eval(pl.element().cast(pl.Int64, strict=False))
        bad = (parsed.list.eval(pl.element().is_null()).list.any() & col.is_not_null()).fill_null(False)
        _first_bad(path, raw, bad, CHUNKS, "integers separated by spaces (each chunk's tokens)")
        col = parsed
    elif col.dtype == pl.Null or (isinstance(col.dtype, pl.List) and col.dtype.inner.is_integer()):
        col = col.cast(pl.List(pl.Int64))
    else:
        raise LapsbenchError(f"{path}: column {CHUNKS} has type {col.dtype}; expected a list of integers (Parquet) "
                             "or integers separated by spaces (CSV)")
    col = col.alias(CHUNKS)
    given = col.is_not_null()
    n, tok = log["prefill_requests"], log["prefill_tokens"]
    _first_bad(path, raw, given & (col.list.len() != n), CHUNKS, "one chunk per prefill request (prefill_requests "
               "of them)")
    _first_bad(path, raw, given & (col.list.min().fill_null(1) < 1), CHUNKS, "chunks of at least one token each")
    _first_bad(path, raw, given & (col.list.sum() != tok), CHUNKS, "chunks summing to prefill_tokens")
    sq = col.list.eval(pl.element() * pl.element()).list.sum()
    if "prefill_tokens_sq" in log.columns:
        _first_bad(path, raw, (given & (sq != log["prefill_tokens_sq"])).fill_null(False), CHUNKS,
                   "chunks whose squares sum to prefill_tokens_sq")
    return log.with_columns(col)
