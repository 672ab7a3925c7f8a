"""Vidur request traces (`arrived_at` in seconds from the start, `num_prefill_tokens`, `num_decode_tokens`),
e.g. microsoft/vidur's splitwise_{conv,code}.csv, which hold the same requests as the Azure 2023 files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lapsbench.trace.importers._stream import ImportReport, Parsed, csv_batches
from lapsbench.trace.importers.options import ImportOptions

COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")


def read(path: Path, options: ImportOptions, report: ImportReport) -> Iterator[Parsed]:
    """One Parsed per batch; arrival = arrived_at minus the first request's."""
    for b in csv_batches(path, COLUMNS):
        yield Parsed(b, b.floats("arrived_at"), b.ints("num_prefill_tokens"), b.ints("num_decode_tokens"), *COLUMNS)
