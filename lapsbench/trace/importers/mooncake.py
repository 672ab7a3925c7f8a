"""Mooncake JSONL traces: one object per line with `timestamp` (ms), `input_length`, `output_length` and
optionally `hash_ids` (512-token prefix-block ids, kept as a list<int64> column). Ties keep file order."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.errors import LapsbenchError
from lapsbench.trace.importers._stream import Batch, ImportReport, Parsed, row_error
from lapsbench.trace.importers.options import ImportOptions

KEYS = ("timestamp", "input_length", "output_length")
BATCH_ROWS = 65536


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(path: Path, line: int, record: dict, with_hashes: bool) -> None:
    for key in KEYS + (("hash_ids",) if with_hashes else ()):
        if key not in record:
            raise LapsbenchError(f"{path}: line {line}: missing key {key!r}; has {sorted(record)}; "
                                 f"expected {', '.join(KEYS)}" + (", hash_ids (as on line 1)" if with_hashes else ""))
    ts = record["timestamp"]
    if not (isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts)):
        raise row_error(path, line, "timestamp", ts, "a finite number of milliseconds")
    for key in ("input_length", "output_length"):
        if not (_is_int(record[key]) and record[key] >= 0):
            raise row_error(path, line, key, record[key], "an integer token count >= 0")
    if with_hashes:
        ids = record["hash_ids"]
        if not (isinstance(ids, list) and all(_is_int(x) for x in ids)):
            raise row_error(path, line, "hash_ids", ids, "a list of integer block ids")


def _batch(path: Path, rows: list[tuple[int, dict]], with_hashes: bool) -> Parsed:
    raw = pl.DataFrame({key: [json.dumps(r[key]) for _, r in rows] for key in KEYS})
    batch = Batch(path, raw, np.array([line for line, _ in rows], dtype=np.int64))
    extras = {}
    if with_hashes:
        extras["hash_ids"] = pl.Series("hash_ids", [r["hash_ids"] for _, r in rows], dtype=pl.List(pl.Int64))
    return Parsed(batch, pl.Series([float(r["timestamp"]) for _, r in rows], dtype=pl.Float64),
                  pl.Series([r["input_length"] for _, r in rows], dtype=pl.Int64),
                  pl.Series([r["output_length"] for _, r in rows], dtype=pl.Int64),
                  *KEYS, extras=extras, time_scale=1e-3)


def read(path: Path, options: ImportOptions, report: ImportReport) -> Iterator[Parsed]:
    """Parse line by line (exact line numbers), yielding batches of BATCH_ROWS requests."""
    rows: list[tuple[int, dict]] = []
    with_hashes: bool | None = None
    with open(path, encoding="utf-8") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LapsbenchError(f"{path}: line {line}, column {exc.colno}: {text.strip()[:60]!r}: JSON syntax "
                                     f"error ({exc.msg}); expected one JSON object per line") from None
            if not isinstance(record, dict):
                raise LapsbenchError(f"{path}: line {line}: {text.strip()[:40]!r} — expected a JSON object")
            if with_hashes is None:
                with_hashes = "hash_ids" in record
            _check(path, line, record, with_hashes)
            rows.append((line, record))
            if len(rows) == BATCH_ROWS:
                yield _batch(path, rows, with_hashes)
                rows = []
    if with_hashes is None:
        raise LapsbenchError(f"{path}: line 1: empty file; expected JSON lines with {', '.join(KEYS)}")
    if rows:
        yield _batch(path, rows, with_hashes)
