"""The streaming machinery every importer shares: read a source in batches that remember each row's line
number, parse columns strictly, then check order, re-base time, number requests and append Parquet row
groups. Memory stays bounded by the batch size, so a 27-million-row CSV converts in well under 2 GB."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lapsbench.errors import LapsbenchError

BLOCK_BYTES = 16 << 20
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f")


def row_error(path: Path, line: int, column: str, value: object, expected: str) -> LapsbenchError:
    """The one-line message for a bad value: file, line, column, value, expectation."""
    return LapsbenchError(f"{path}: line {line}, column {column!r}: {value!r} — expected {expected}")


@dataclass
class Batch:
    """Raw string columns of consecutive source rows and each row's 1-based line number in the file."""

    path: Path
    raw: pl.DataFrame
    lines: np.ndarray

    def fail(self, mask: np.ndarray | pl.Series, column: str, expected: str, value_column: str | None = None) -> None:
        """Raise for the first row where `mask` is true, quoting the raw value of `column`."""
        mask = mask.to_numpy() if isinstance(mask, pl.Series) else mask
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            value = self.raw[value_column or column][row]
            raise row_error(self.path, int(self.lines[row]), column, value, expected)

    def ints(self, column: str) -> pl.Series:
        """A token-count column: integers >= 0 (zero is judged later, by the caller's rules)."""
        values = self.raw[column].cast(pl.Int64, strict=False)
        self.fail((values.is_null() | (values < 0)).fill_null(True), column, "an integer token count >= 0")
        return values

    def floats(self, column: str) -> pl.Series:
        """A finite real number (seconds or milliseconds)."""
        values = self.raw[column].cast(pl.Float64, strict=False)
        self.fail((values.is_null() | ~values.is_finite()).fill_null(True), column, "a finite number")
        return values

    def timestamps(self, column: str, fmt: str) -> pl.Series:
        """Wall-clock timestamps in one format (with or without a UTC offset), as int64 ns since the epoch."""
        parsed = self.raw[column].str.to_datetime(fmt, strict=False, time_unit="ns")
        shape = "YYYY-MM-DD HH:MM:SS[.fffffff]" + ("+HH:MM like the first row" if "%:z" in fmt else
                                                  " without a UTC offset, like the first row")
        self.fail(parsed.is_null(), column, f"a timestamp {shape}")
        return parsed.dt.epoch("ns")


def timestamp_format(path: Path, line: int, column: str, first: str) -> str:
    """The format of the first timestamp; every later row must use it (fractional seconds optional)."""
    probe = pl.Series([first])
    for fmt in TIME_FORMATS:
        if probe.str.to_datetime(fmt, strict=False, time_unit="ns").null_count() == 0:
            return fmt
    raise row_error(path, line, column, first, "a timestamp YYYY-MM-DD HH:MM:SS[.fffffff][+HH:MM]")


def read_header(path: Path, required: tuple[str, ...]) -> list[str]:
    """The header of a CSV, checked for the columns a format needs."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        first = fh.readline()
    if not first.strip():
        raise LapsbenchError(f"{path}: line 1: empty file; expected a header with columns {','.join(required)}")
    header = [name.strip() for name in next(csv.reader([first]))]
    missing = [name for name in required if name not in header]
    if missing:
        raise LapsbenchError(f"{path}: line 1 (header): missing column {missing[0]!r}; has {','.join(header)}; "
                             f"expected {','.join(required)}")
    return header


_SHORT_ROW = re.compile(r"Row #(\d+): Expected (\d+) columns, got (\d+): (.*)", re.DOTALL)


def csv_batches(path: Path, required: tuple[str, ...], block_bytes: int | None = None) -> Iterator[Batch]:
    """Stream a CSV as string batches. Blank lines are skipped but still counted, so line numbers are exact
    (unless a quoted field spans lines)."""
    header = read_header(path, required)
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=block_bytes or BLOCK_BYTES, encoding="utf8"),
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in header},
                                                 include_columns=list(required)))
        seen = 0
        for record in reader:
            raw = pl.from_arrow(record)
            assert isinstance(raw, pl.DataFrame)
            lines = np.arange(seen + 2, seen + 2 + raw.height, dtype=np.int64)
            seen += raw.height
            blank = pl.all_horizontal(pl.col(name) == "" for name in required)
            keep = ~raw.select(blank.alias("b"))["b"].to_numpy()
            if not keep.all():
                raw, lines = raw.filter(pl.Series(keep)), lines[keep]
            if raw.height:
                yield Batch(path, raw, lines)
    except pa.ArrowInvalid as exc:
        # A row with the wrong number of fields. Arrow's message (single-threaded reader) names its line; an
        # `invalid_row_handler` would too, but any Python handler makes the process abort at exit in about
        # half the runs (exit 134, "terminate called without an active exception"; pyarrow 26).
        short = _SHORT_ROW.search(str(exc))
        if short:
            number, expected, actual, text = short.groups()
            raise LapsbenchError(f"{path}: line {number}: {text!r} has {actual} fields — expected {expected} "
                                 f"({','.join(header)})") from None
        raise LapsbenchError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError as exc:
        raise LapsbenchError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


@dataclass
class Parsed:
    """What a format makes of one batch: time (int ns or float seconds), lengths, a keep mask, extra columns.
    `time_column`, `prompt_column` and `output_column` name the source columns for error messages."""

    batch: Batch
    time: pl.Series
    prompt: pl.Series
    output: pl.Series
    time_column: str
    prompt_column: str
    output_column: str
    keep: pl.Series | None = None
    extras: dict[str, pl.Series] = field(default_factory=dict)
    time_scale: float = 1.0  # seconds per unit of `time`


@dataclass
class ImportReport:
    """What an import did, for the CLI's one-line summary and for tests."""

    format: str
    rows_read: int = 0
    rows_written: int = 0
    span_s: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count


class TraceSink:
    """Checks order across batches, re-bases time at the first kept request, numbers requests 0..N-1 and
    appends zstd Parquet row groups to `out` (a temporary path the caller renames)."""

    def __init__(self, out: Path, source: Path, report: ImportReport, drop_zero: bool = False,
                 arrivals: Callable[[int], np.ndarray] | None = None) -> None:
        self.out, self.source, self.report = out, source, report
        self.drop_zero, self.arrivals = drop_zero, arrivals
        self.writer: pq.ParquetWriter | None = None
        self.prev: tuple[float | int, int, object] | None = None  # last time, its line, its raw value
        self.t0: float | int | None = None
        self.next_id = 0

    def add(self, p: Parsed) -> None:
        b = p.batch
        self.report.rows_read += b.raw.height
        if p.time.len():
            self._check_order(p)
        keep = p.keep.to_numpy() if p.keep is not None else np.ones(b.raw.height, dtype=bool)
        zero = ((p.prompt == 0) | (p.output == 0)).to_numpy() & keep
        if zero.any():
            if not self.drop_zero:
                b.fail(zero & (p.prompt == 0).to_numpy(), p.prompt_column, "a token count >= 1 (or --drop-zero)")
                b.fail(zero, p.output_column, "a token count >= 1 (or --drop-zero)")
            self.report.drop("zero tokens", int(zero.sum()))
            keep = keep & ~zero
        n = int(keep.sum())
        if n == 0:
            return
        mask = pl.Series(keep)
        if self.arrivals is not None:
            arrival = pl.Series(self.arrivals(n))
        else:
            time = p.time.filter(mask)
            if self.t0 is None:
                self.t0 = time[0]
            arrival = (time - self.t0).cast(pl.Float64) * p.time_scale
        frame = pl.DataFrame({
            "request_id": pl.int_range(self.next_id, self.next_id + n, dtype=pl.Int64, eager=True),
            "arrival_s": arrival.cast(pl.Float64),
            "prompt_tokens": p.prompt.filter(mask).cast(pl.Int64),
            "output_tokens": p.output.filter(mask).cast(pl.Int64),
            **{name: s.filter(mask) for name, s in p.extras.items()},
        })
        self.next_id += n
        self.report.span_s = float(frame["arrival_s"][-1])
        table = frame.to_arrow()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.out, table.schema, compression="zstd")
        self.writer.write_table(table.cast(self.writer.schema))

    def _check_order(self, p: Parsed) -> None:
        b, t = p.batch, p.time
        back = (t.diff() < 0).fill_null(False).to_numpy()
        if self.prev is not None and t[0] < self.prev[0]:
            back[0] = True
        if back.any():
            row = int(np.flatnonzero(back)[0])
            prev_line, prev_raw = (self.prev[1], self.prev[2]) if row == 0 and self.prev else \
                (int(b.lines[row - 1]), b.raw[p.time_column][row - 1])
            raise row_error(b.path, int(b.lines[row]), p.time_column, b.raw[p.time_column][row],
                            f"non-decreasing timestamps (line {prev_line} has {prev_raw!r}); "
                            "the file is not sorted by arrival")
        self.prev = (t[-1], int(b.lines[-1]), b.raw[p.time_column][-1])

    def close(self, ok: bool = True) -> None:
        """Finish the file; a source with no kept request is an error (nothing is written)."""
        if self.writer is not None:
            self.writer.close()
        if ok and self.writer is None:
            dropped = ", ".join(f"{k}: {v}" for k, v in self.report.dropped.items()) or "none"
            raise LapsbenchError(f"{self.source}: no requests to import ({self.report.rows_read} data rows read, "
                                 f"dropped {dropped}); expected at least one request")
        self.report.rows_written = self.next_id
