"""The step log a replay writes: one row per executed engine step, in the v1 schema of docs/steplog.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.engine.context import BatchStep
from lapsbench.fsutil import atomic_file

VERSION = "1"
SCHEMA: dict[str, pl.DataType] = {
    "scheduler": pl.String(), "replication": pl.Int32(), "step": pl.Int64(), "start_s": pl.Float64(),
    "wall_ms": pl.Float64(), "gpu_ms": pl.Float64(), "k": pl.Int32(), "decode_requests": pl.Int32(),
    "context_tokens": pl.Int64(), "context_max": pl.Int64(), "prefill_requests": pl.Int32(),
    "prefill_tokens": pl.Int64(), "prefill_context_tokens": pl.Int64(), "prefill_tokens_sq": pl.Int64(),
    "prefill_tokens_context": pl.Int64(), "emitted_tokens": pl.Int64(), "prefill_chunks": pl.List(pl.Int64()),
}


class StepLog:
    """Rows of the run in progress (`begin` starts a run), as plain lists: one append per step."""

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []
        self.rows: dict[str, list] = {}
        self.label, self.replication = "", 0

    def begin(self, label: str, replication: int) -> None:
        self.end()
        self.label, self.replication = label, replication
        self.rows = {name: [] for name in SCHEMA if name not in ("scheduler", "replication")}

    def add(self, step: BatchStep, start_s: float, wall_ms: float, gpu_ms: float | None) -> None:
        r = self.rows
        r["step"].append(len(r["step"]))
        r["start_s"].append(start_s)
        r["wall_ms"].append(wall_ms)
        r["gpu_ms"].append(gpu_ms)
        r["k"].append(step.k)
        r["decode_requests"].append(step.decode.size)
        r["context_tokens"].append(int(step.context.sum()))
        r["context_max"].append(int(step.context.max(initial=0)))
        r["prefill_requests"].append(step.prefill.size)
        r["prefill_tokens"].append(int(step.chunk.sum()))
        r["prefill_context_tokens"].append(int(step.cached.sum()))
        chunk = step.chunk.astype(np.int64)
        r["prefill_tokens_sq"].append(int(np.dot(chunk, chunk)))
        r["prefill_tokens_context"].append(int(np.dot(chunk, step.cached.astype(np.int64))))
        r["emitted_tokens"].append(int(step.emitted.sum()) + int(np.count_nonzero(step.completes)))
        r["prefill_chunks"].append(chunk.tolist())

    def end(self) -> None:
        """Close the run in progress into a frame."""
        if self.rows and self.rows["step"]:
            n = len(self.rows["step"])
            self.frames.append(pl.DataFrame(
                {"scheduler": [self.label] * n, "replication": [self.replication] * n, **self.rows},
                schema=SCHEMA))
        self.rows = {}

    def frame(self) -> pl.DataFrame:
        self.end()
        return pl.concat(self.frames) if self.frames else pl.DataFrame(schema=SCHEMA)


def write_steplog(path: Path, steps: pl.DataFrame) -> None:
    """steps.parquet with the schema version in its key-value metadata (`lapsbench.steplog`)."""
    import pyarrow.parquet as pq

    table = steps.to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"lapsbench.steplog": VERSION.encode()})
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
