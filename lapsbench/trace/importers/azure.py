"""Azure LLM inference traces: 2023 (Splitwise; naive timestamps with 7 fractional digits) and 2024
(DynamoLLM week-long; timestamps with a UTC offset, fractional seconds present or not). Arrival = seconds
since the first request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lapsbench.trace.importers._stream import ImportReport, Parsed, csv_batches, timestamp_format
from lapsbench.trace.importers.options import ImportOptions

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def read(path: Path, options: ImportOptions, report: ImportReport) -> Iterator[Parsed]:
    """One Parsed per batch; the first row fixes the timestamp form (with or without a UTC offset)."""
    fmt = None
    for b in csv_batches(path, COLUMNS):
        if fmt is None:
            fmt = timestamp_format(path, int(b.lines[0]), "TIMESTAMP", b.raw["TIMESTAMP"][0])
        yield Parsed(b, b.timestamps("TIMESTAMP", fmt), b.ints("ContextTokens"), b.ints("GeneratedTokens"),
                     *COLUMNS, time_scale=1e-9)
