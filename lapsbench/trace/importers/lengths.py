"""Length-only CSVs (`num_prefill_tokens`, `num_decode_tokens`, e.g. Vidur's sharegpt/arxiv stats) paired
with seeded synthetic arrivals, drawn from the same stream `trace synth` uses for the same seed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from lapsbench.trace.importers._stream import ImportReport, Parsed, csv_batches
from lapsbench.trace.importers.options import ImportOptions

COLUMNS = ("num_prefill_tokens", "num_decode_tokens")


def read(path: Path, options: ImportOptions, report: ImportReport) -> Iterator[Parsed]:
    """One Parsed per batch, without times: the sink draws arrivals for the kept rows."""
    for b in csv_batches(path, COLUMNS):
        yield Parsed(b, pl.Series([], dtype=pl.Float64), b.ints("num_prefill_tokens"), b.ints("num_decode_tokens"),
                     "", *COLUMNS)
