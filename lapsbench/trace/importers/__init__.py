"""`trace import`: convert a raw arrival trace (Azure 2023/2024, BurstGPT, Mooncake, Vidur, length-only
CSV) into the canonical Parquet trace, streaming, with one-line errors that name file, line, column and
value. The format is detected from the header (or first line) when not given."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lapsbench.errors import LapsbenchError
from lapsbench.fsutil import atomic_file
from lapsbench.trace.importers import azure, burstgpt, lengths, mooncake, vidur
from lapsbench.trace.importers._stream import ImportReport, Parsed, TraceSink
from lapsbench.trace.importers.options import ImportOptions
from lapsbench.trace.synth import ArrivalStream

Reader = Callable[[Path, ImportOptions, ImportReport], Iterator[Parsed]]
FORMATS: dict[str, Reader] = {"azure": azure.read, "burstgpt": burstgpt.read, "mooncake": mooncake.read,
                              "vidur": vidur.read, "lengths": lengths.read}
# Checked in order: the first format whose columns are all in the header wins.
DETECT = (("azure", azure.COLUMNS), ("burstgpt", ("Timestamp", "Request tokens", "Response tokens")),
          ("vidur", vidur.COLUMNS), ("lengths", lengths.COLUMNS))

__all__ = ["FORMATS", "ImportOptions", "ImportReport", "detect_format", "import_trace"]


def detect_format(path: Path) -> str:
    """The format named by the first non-blank line: a JSON object means mooncake, else the CSV header."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        first = next((line for line in fh if line.strip()), "")
    if not first:
        raise LapsbenchError(f"{path}: line 1: empty file; expected a CSV header or JSON lines")
    if "\x00" in first or "\ufffd" in first:
        raise LapsbenchError(f"{path}: line 1: binary data, not a text trace; expected a CSV header or JSON lines")
    if first.lstrip().startswith("{"):
        return "mooncake"
    header = {name.strip() for name in next(csv.reader([first]))}
    for name, columns in DETECT:
        if set(columns) <= header:
            return name
    raise LapsbenchError(f"{path}: line 1: cannot tell the format from header {first.strip()[:80]!r}; "
                         f"expected --format {'|'.join(FORMATS)}")


def _check_options(fmt: str, options: ImportOptions, source: Path) -> None:
    if fmt != "burstgpt" and (options.models or options.keep_failed):
        raise LapsbenchError(f"{source}: --model and --keep-failed apply to burstgpt traces only (this is {fmt})")
    if fmt == "lengths" and options.rate is None:
        raise LapsbenchError(f"{source}: a length-only file has no timestamps; expected --rate R "
                             "(and optionally --arrival gamma --cv C, --seed S)")
    if fmt != "lengths" and (options.rate is not None or options.cv is not None or options.arrival != "poisson"):
        raise LapsbenchError(f"{source}: --rate, --arrival and --cv apply to length-only files only (this is {fmt})")


def import_trace(source: str | Path, out: str | Path, fmt: str | None = None,
                 options: ImportOptions | None = None) -> ImportReport:
    """Convert `source` to a canonical trace at `out` (atomically: on any error nothing is written)."""
    source, out, options = Path(source), Path(out), options or ImportOptions()
    if not source.is_file():
        raise LapsbenchError(f"{source}: no such file; expected a raw trace to import")
    fmt = fmt or detect_format(source)
    if fmt not in FORMATS:
        raise LapsbenchError(f"--format: {fmt!r} — expected one of {', '.join(FORMATS)}")
    _check_options(fmt, options, source)
    arrivals = None
    if fmt == "lengths":
        assert options.rate is not None
        rng = np.random.default_rng(np.random.SeedSequence(options.seed).spawn(4)[0])
        arrivals = ArrivalStream(options.rate, options.arrival, options.cv, rng).next
    report = ImportReport(fmt)
    with atomic_file(out) as tmp:
        sink = TraceSink(tmp, source, report, options.drop_zero, arrivals)
        ok = False
        try:
            for parsed in FORMATS[fmt](source, options, report):
                sink.add(parsed)
            ok = True
        finally:
            sink.close(ok)
    return report
