"""Step log v1 (docs/steplog.md): reading, defaults, and every bad input → one line naming file, column, first
bad row and value; `calibrate fit --steps` on a bad log exits 2 and writes nothing."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lapsbench.calibrate.steplog import METADATA_KEY, read_steplog, step_phase
from lapsbench.errors import LapsbenchError

from cli_helpers import lapsbench

REPO = Path(__file__).resolve().parent.parent


def good_log() -> pl.DataFrame:
    """Five steps of a batch-1 SD run: a prefill, three decode steps, a mixed step."""
    return pl.DataFrame({
        "start_s": [0.0, 0.012, 0.020, 0.028, 0.036],
        "wall_ms": [12.0, 8.0, 8.1, 8.0, 20.0],
        "k": [4, 4, 4, 4, 4],
        "decode_requests": [0, 1, 1, 1, 2],
        "context_tokens": [0, 300, 305, 309, 600],
        "context_max": [0, 300, 305, 309, 313],
        "prefill_requests": [1, 0, 0, 0, 1],
        "prefill_tokens": [300, 0, 0, 0, 256],
        "prefill_context_tokens": [0, 0, 0, 0, 512],
    })


def test_reads_csv_and_parquet_with_defaults(tmp_path: Path) -> None:
    csv, pq = tmp_path / "s.csv", tmp_path / "s.parquet"
    good_log().write_csv(csv)
    good_log().with_columns(pl.lit("fcfs").alias("scheduler"), pl.lit(3.5).alias("gpu_ms")).write_parquet(
        pq, metadata={METADATA_KEY: "1"})
    a, b = read_steplog(csv), read_steplog(pq)
    assert a["scheduler"].to_list() == [""] * 5 and a["replication"].to_list() == [0] * 5
    assert a["step"].to_list() == [0, 1, 2, 3, 4]
    assert b["scheduler"].to_list() == ["fcfs"] * 5 and b["gpu_ms"].to_list() == [3.5] * 5
    assert a["context_tokens"].dtype == pl.Int64 and a["wall_ms"].dtype == pl.Float64
    assert step_phase(a).tolist() == ["prefill", "decode", "decode", "decode", "mixed"]


def with_chunk_sums(sq1: int = 0, sq4: int = 256 * 256, tc0: int = 0, tc4: int = 256 * 512) -> pl.DataFrame:
    """good_log with its chunk sums (one chunk per prefill step: Σ chunk² = chunk², Σ chunk × cached = chunk ×
    cached), some of them replaced."""
    return good_log().with_columns(pl.Series("prefill_tokens_sq", [300 * 300, sq1, 0, 0, sq4]),
                                   pl.Series("prefill_tokens_context", [tc0, 0, 0, 0, tc4]))


def test_chunk_sums_read_or_null(tmp_path: Path) -> None:
    """Logged chunk sums are kept (and priced from); a log without them, or a row left empty, reads as null,
    which the fit and the step prices fill in as equal chunks (lapsbench.calibrate.step_fit.chunk_sums)."""
    from lapsbench.calibrate.step_fit import chunk_sums

    def read(df: pl.DataFrame, name: str) -> pl.DataFrame:
        df.write_csv(tmp_path / name)
        return read_steplog(tmp_path / name)

    logged = read(with_chunk_sums().with_columns(pl.Series("prefill_tokens_sq", [300 * 300, 0, 0, 0, None])),
                  "a.csv")
    bare = read(good_log(), "b.csv")
    assert logged["prefill_tokens_sq"].to_list() == [90000, 0, 0, 0, None]
    assert logged["prefill_tokens_context"].to_list() == [0, 0, 0, 0, 256 * 512]
    assert bare["prefill_tokens_sq"].null_count() == bare.height == bare["prefill_tokens_context"].null_count()
    sq, tc = chunk_sums(logged)
    assert sq.tolist() == [90000, 0, 0, 0, 256 * 256] and tc.tolist() == [0, 0, 0, 0, 256 * 512]
    two = pl.DataFrame({"prefill_requests": [2, 2], "prefill_tokens": [300, 300], "prefill_context_tokens": [0, 80],
                        "prefill_tokens_sq": [100 ** 2 + 200 ** 2, None], "prefill_tokens_context": [0, None]})
    sq, tc = chunk_sums(two)
    assert sq.tolist() == [50000, 45000] and tc.tolist() == [0, 12000]  # row 1: two chunks of 150 assumed


def with_chunks(last: str = "256", sq4: int | None = None) -> pl.DataFrame:
    """good_log with its prefill_chunks as CSV writes them (integers separated by spaces; empty: no prefill),
    the last step's replaced; with its chunk sums when `sq4` is given."""
    df = good_log().with_columns(pl.Series("prefill_chunks", ["300", None, None, None, last]))
    return df if sq4 is None else df.with_columns(pl.Series("prefill_tokens_sq", [90000, 0, 0, 0, sq4]))


def test_prefill_chunks_read_from_csv_and_parquet(tmp_path: Path) -> None:
    """prefill_chunks: a list per row (Parquet) or integers separated by spaces (CSV), null where not logged;
    read as a list of int64 either way."""
    two = good_log().with_columns(pl.Series("prefill_requests", [1, 0, 0, 0, 2]))
    two.with_columns(pl.Series("prefill_chunks", ["300", "", None, None, "56 200"])).write_csv(tmp_path / "a.csv")
    two.with_columns(pl.Series("prefill_chunks", [[300], [], None, None, [56, 200]], dtype=pl.List(pl.Int32))
                     ).write_parquet(tmp_path / "a.parquet")
    for name in ("a.csv", "a.parquet"):
        log = read_steplog(tmp_path / name)
        assert log["prefill_chunks"].dtype == pl.List(pl.Int64)
        assert log["prefill_chunks"].to_list()[0] == [300] and log["prefill_chunks"].to_list()[4] == [56, 200]
        assert log["prefill_chunks"].to_list()[2] is None
    assert read_steplog(_write(tmp_path, good_log()))["prefill_chunks"].null_count() == 5


def _write(tmp_path: Path, df: pl.DataFrame) -> Path:
    df.write_csv(tmp_path / "plain.csv")
    return tmp_path / "plain.csv"


def _edit(column: str, row: int, value: object) -> pl.DataFrame:
    df = good_log()
    values = df[column].to_list()
    values[row] = value
    return df.with_columns(pl.Series(column, values, strict=False))


BAD = {  # case: (log, column in the message, row, expectation fragment)
    "missing": (good_log().drop("context_max"), "context_max", None, "missing column"),
    "zero_wall": (_edit("wall_ms", 2, 0.0), "wall_ms", 2, "> 0 ms"),
    "negative_start": (_edit("start_s", 0, -1.0), "start_s", 0, ">= 0"),
    "negative_count": (_edit("prefill_context_tokens", 4, -5), "prefill_context_tokens", 4, ">= 0"),
    "fraction_count": (_edit("decode_requests", 1, 1.5), "decode_requests", 1, "integer"),
    "text": (good_log().with_columns(pl.col("k").cast(pl.Utf8)).with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("four")).otherwise(pl.col("k")).alias("k")), "k", 3,
        "integer"),
    "prefill_tokens_without_requests": (_edit("prefill_tokens", 1, 50), "prefill_tokens", 1, "prefill_requests"),
    "requests_without_tokens": (_edit("prefill_tokens", 0, 0), "prefill_tokens", 0, "prefill_requests"),
    "max_above_sum": (_edit("context_max", 4, 700), "context_max", 4, "<= context_tokens"),
    "max_below_mean": (_edit("context_max", 4, 200), "context_max", 4, "mean"),
    "context_without_decode": (_edit("context_tokens", 0, 10), "context_tokens", 0, "decode_requests"),
    "empty_step": (_edit("decode_requests", 1, 0).with_columns(
        pl.Series("context_tokens", [0, 0, 305, 309, 600]), pl.Series("context_max", [0, 0, 305, 309, 313])),
        "decode_requests", 1, ">= 1"),
    "time_goes_back": (_edit("start_s", 3, 0.001), "start_s", 3, "non-decreasing"),
    "squares_below_equal_chunks": (with_chunk_sums(sq4=30000), "prefill_tokens_sq", 4, "prefill_tokens²"),
    "squares_above_one_chunk": (with_chunk_sums(sq4=256 * 256 + 1), "prefill_tokens_sq", 4, "prefill_tokens²"),
    "squares_without_prefill": (with_chunk_sums(sq1=9), "prefill_tokens_sq", 1, "prefill_requests is 0"),
    "negative_squares": (with_chunk_sums(sq4=-1), "prefill_tokens_sq", 4, ">= 0"),
    "chunk_context_above_product": (with_chunk_sums(tc4=256 * 512 + 1), "prefill_tokens_context", 4,
                                    "prefill_tokens × prefill_context_tokens"),
    "chunk_context_without_context": (with_chunk_sums(tc0=300), "prefill_tokens_context", 0,
                                      "between prefill_context_tokens"),
    "no_rows": (good_log().head(0), None, None, "no rows"),
    "chunks_not_integers": (with_chunks("25x6"), "prefill_chunks", 4, "integers separated by spaces"),
    "chunks_fewer_than_prefills": (with_chunks("100 156"), "prefill_chunks", 4, "one chunk per prefill request"),
    "chunks_not_summing": (with_chunks("255"), "prefill_chunks", 4, "summing to prefill_tokens"),
    "chunks_squares_differ": (with_chunks("100 156", sq4=100 * 100 + 156 * 156 + 2).with_columns(
        pl.Series("prefill_requests", [1, 0, 0, 0, 2])), "prefill_chunks", 4, "squares sum to prefill_tokens_sq"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_log_one_line(tmp_path: Path, case: str) -> None:
    df, column, row, want = BAD[case]
    path = tmp_path / "steps.csv"
    df.write_csv(path)
    with pytest.raises(LapsbenchError) as err:
        read_steplog(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and want in msg, msg
    if column is not None:
        assert column in msg, msg
    if row is not None:
        assert f"row {row} " in msg, msg


def test_wrong_version_and_unreadable(tmp_path: Path) -> None:
    pq = tmp_path / "s.parquet"
    good_log().write_parquet(pq, metadata={METADATA_KEY: "2"})
    with pytest.raises(LapsbenchError, match="version"):
        read_steplog(pq)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(LapsbenchError, match="cannot read step log"):
        read_steplog(junk)
    with pytest.raises(LapsbenchError, match="no such step log"):
        read_steplog(tmp_path / "absent.csv")


def test_cli_bad_log_exits_2_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "steps.csv"
    _edit("wall_ms", 2, -3.0).write_csv(path)
    out = tmp_path / "p.toml"
    r = lapsbench("calibrate", "fit", "--steps", str(path), "--out", str(out), "--target", "llama2-7b", "--draft",
                  "llama-68m", "--gpu", "NVIDIA H200")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "wall_ms row 2" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.glob(".p.toml*"))
