"""BurstGPT (`Timestamp` in seconds from the start, `Model`, `Request tokens`, `Response tokens`,
`Total tokens`, `Log Type`). Failed requests (0 response tokens) are dropped, or with `keep_failed` kept
with `output_tokens = 1` and `failed = true` (a rejected request still costs its prefill and one step).
`Model` and `Log Type` pass through as `model` and `log_type`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from lapsbench.trace.importers._stream import ImportReport, Parsed, csv_batches
from lapsbench.trace.importers.options import ImportOptions

COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Log Type")


def read(path: Path, options: ImportOptions, report: ImportReport) -> Iterator[Parsed]:
    """One Parsed per batch, with failed and other-model rows masked out (and counted)."""
    for b in csv_batches(path, COLUMNS):
        time = b.floats("Timestamp")
        prompt = b.ints("Request tokens")
        response = b.ints("Response tokens")
        failed = response == 0
        keep = pl.Series([True] * b.raw.height)
        if options.models:
            wanted = b.raw["Model"].is_in(list(options.models))
            report.drop("other models", int((~wanted).sum()))
            keep = keep & wanted
        if not options.keep_failed:
            report.drop("failed", int((failed & keep).sum()))
            keep = keep & ~failed
        extras = {"model": b.raw["Model"], "log_type": b.raw["Log Type"]}
        if options.keep_failed:
            extras["failed"] = failed
        yield Parsed(b, time, prompt, response.clip(lower_bound=1) if options.keep_failed else response,
                     "Timestamp", "Request tokens", "Response tokens", keep=keep, extras=extras)
