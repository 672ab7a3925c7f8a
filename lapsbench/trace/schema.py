"""The canonical trace: one Parquet row per request (docs/contract: request_id, arrival_s,
prompt_tokens, output_tokens; optional alpha, acc_len, predicted_output_tokens, pass-through columns).

`read_trace` validates every rule and raises LapsbenchError naming the file, column, first bad row and
value; `write_trace` validates before writing and writes atomically."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.errors import LapsbenchError
from lapsbench.fsutil import atomic_file

REQUIRED = {"request_id": "int", "arrival_s": "float", "prompt_tokens": "int", "output_tokens": "int"}
OPTIONAL = {"alpha": "float", "acc_len": "list[int]", "predicted_output_tokens": "float"}
CORE_COLUMNS = tuple(REQUIRED) + tuple(OPTIONAL)
# Most tokens a request's prompt or output may have: 2^20, a 1M-token context (the longest of current models).
# Far larger counts are not requests but corrupt data, and their steps would not fit in memory.
MAX_TOKENS = 1 << 20


def _bad(source: str, column: str, row: int, value: object, expected: str) -> LapsbenchError:
    return LapsbenchError(f"{source}: column {column!r}, row {row}: {value!r} — expected {expected}")


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def validate_trace(df: pl.DataFrame, source: str = "trace") -> pl.DataFrame:
    """Check every canonical rule; return the frame with core columns cast to their canonical types."""
    for column, kind in REQUIRED.items():
        if column not in df.columns:
            raise LapsbenchError(
                f"{source}: missing column {column!r} ({kind}); has {df.columns}; "
                "expected request_id, arrival_s, prompt_tokens, output_tokens")
    if df.height == 0:
        raise LapsbenchError(f"{source}: the trace has no rows; expected at least one request")
    for column in ("request_id", "prompt_tokens", "output_tokens"):
        dtype = df.schema[column]
        if not dtype.is_integer():
            raise LapsbenchError(f"{source}: column {column!r} has type {dtype}; expected an integer type")
    for column in ("arrival_s", "alpha", "predicted_output_tokens"):
        if column in df.columns and not df.schema[column].is_numeric():
            raise LapsbenchError(f"{source}: column {column!r} has type {df.schema[column]}; expected float64")
    for column in df.columns:
        if column in CORE_COLUMNS and column != "acc_len" and df[column].null_count():
            row = _first(df[column].is_null().to_numpy())
            raise _bad(source, column, row, None, "a value (no nulls)")

    ids = df["request_id"].to_numpy()
    dup = pl.Series(ids).is_duplicated().to_numpy()
    if dup.any():
        row = _first(dup)
        raise _bad(source, "request_id", row, int(ids[row]), "unique request ids")
    arrival = df["arrival_s"].cast(pl.Float64).to_numpy()
    bad = ~np.isfinite(arrival)
    if bad.any():
        row = _first(bad)
        raise _bad(source, "arrival_s", row, float(arrival[row]), "a finite number of seconds")
    if (arrival < 0).any():
        row = _first(arrival < 0)
        raise _bad(source, "arrival_s", row, float(arrival[row]), "seconds >= 0")
    back = np.diff(arrival) < 0
    if back.any():
        row = _first(back) + 1
        raise _bad(source, "arrival_s", row, float(arrival[row]),
                   f"non-decreasing arrivals (previous row has {arrival[row - 1]!r})")
    for column in ("prompt_tokens", "output_tokens"):
        values = df[column].to_numpy()
        bad = (values < 1) | (values > MAX_TOKENS)
        if bad.any():
            row = _first(bad)
            raise _bad(source, column, row, int(values[row]), f"an integer in 1..{MAX_TOKENS:,}")
    if "alpha" in df.columns:
        alpha = df["alpha"].cast(pl.Float64).to_numpy()
        bad = ~(np.isfinite(alpha) & (alpha >= 0) & (alpha < 1))
        if bad.any():
            row = _first(bad)
            raise _bad(source, "alpha", row, float(alpha[row]), "an acceptance probability in [0, 1)")
    if "predicted_output_tokens" in df.columns:
        pred = df["predicted_output_tokens"].cast(pl.Float64).to_numpy()
        bad = ~(np.isfinite(pred) & (pred > 0))
        if bad.any():
            row = _first(bad)
            raise _bad(source, "predicted_output_tokens", row, float(pred[row]), "a finite number > 0")
    if "acc_len" in df.columns:
        dtype = df.schema["acc_len"]
        if not (isinstance(dtype, pl.List) and dtype.inner.is_integer()):
            raise LapsbenchError(f"{source}: column 'acc_len' has type {dtype}; expected list<int16>")
        lengths = df["acc_len"].list.len().fill_null(0).to_numpy()
        if (lengths == 0).any():
            row = _first(lengths == 0)
            raise _bad(source, "acc_len", row, None, "a non-empty list of acceptance lengths")
        mins = df["acc_len"].list.min().to_numpy()
        if (mins < 1).any():
            row = _first(mins < 1)
            raise _bad(source, "acc_len", row, int(mins[row]), "acceptance lengths >= 1")

    casts = [pl.col("request_id").cast(pl.Int64), pl.col("arrival_s").cast(pl.Float64),
             pl.col("prompt_tokens").cast(pl.Int64), pl.col("output_tokens").cast(pl.Int64)]
    if "alpha" in df.columns:
        casts.append(pl.col("alpha").cast(pl.Float64))
    if "predicted_output_tokens" in df.columns:
        casts.append(pl.col("predicted_output_tokens").cast(pl.Float64))
    if "acc_len" in df.columns:
        casts.append(pl.col("acc_len").cast(pl.List(pl.Int16)))
    return df.with_columns(casts)


def read_trace(path: str | Path) -> pl.DataFrame:
    """Read and validate a canonical Parquet trace."""
    path = Path(path)
    if not path.is_file():
        raise LapsbenchError(f"{path}: no such trace file; expected a canonical Parquet trace")
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for non-Parquet input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LapsbenchError(f"{path}: not a readable Parquet file ({first})") from None
    return validate_trace(df, str(path))


def write_trace(df: pl.DataFrame, path: str | Path) -> Path:
    """Validate, then write atomically (zstd Parquet)."""
    path = Path(path)
    df = validate_trace(df, str(path))
    with atomic_file(path) as tmp:
        df.write_parquet(tmp, compression="zstd")
    return path


def trace_hash(path: str | Path) -> str:
    """SHA-256 of the trace file's bytes, recorded in meta.json so a result names its exact input."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
