"""read_trace / validate_trace: every bad input names the file and the column; any valid frame passes
and any single corruption fails naming the corrupted column (hypothesis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapsbench.errors import LapsbenchError
from lapsbench.trace.schema import read_trace, validate_trace, write_trace


def good_frame(n: int = 4) -> pl.DataFrame:
    return pl.DataFrame({"request_id": list(range(n)), "arrival_s": [0.5 * i for i in range(n)],
                         "prompt_tokens": [10] * n, "output_tokens": [5] * n, "alpha": [0.5] * n})


def write_raw(df: pl.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "bad_trace.parquet"
    df.write_parquet(path)
    return path


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(LapsbenchError, match="nope.parquet"):
        read_trace(tmp_path / "nope.parquet")


def test_not_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "text.parquet"
    path.write_text("request_id,arrival_s\n0,0\n")
    with pytest.raises(LapsbenchError, match=r"text\.parquet.*Parquet") as err:
        read_trace(path)
    assert "\n" not in str(err.value)


CORRUPTIONS = {
    "missing column": (lambda df: df.drop("output_tokens"), "output_tokens"),
    "mistyped column": (lambda df: df.with_columns(pl.col("prompt_tokens").cast(pl.String)), "prompt_tokens"),
    "float token count": (lambda df: df.with_columns(pl.col("output_tokens").cast(pl.Float64)), "output_tokens"),
    "zero length": (lambda df: df.with_columns(pl.lit(0).alias("prompt_tokens")), "prompt_tokens"),
    "negative length": (lambda df: df.with_columns(pl.lit(-3).alias("output_tokens")), "output_tokens"),
    "unsorted arrivals": (lambda df: df.with_columns(pl.Series("arrival_s", [0.0, 2.0, 1.0, 3.0])), "arrival_s"),
    "NaN arrival": (lambda df: df.with_columns(pl.Series("arrival_s", [0.0, float("nan"), 1.0, 2.0])), "arrival_s"),
    "inf arrival": (lambda df: df.with_columns(pl.Series("arrival_s", [0.0, 1.0, 2.0, float("inf")])), "arrival_s"),
    "negative arrival": (lambda df: df.with_columns(pl.Series("arrival_s", [-1.0, 1.0, 2.0, 3.0])), "arrival_s"),
    "duplicate ids": (lambda df: df.with_columns(pl.Series("request_id", [0, 1, 1, 2])), "request_id"),
    "alpha = 1": (lambda df: df.with_columns(pl.Series("alpha", [0.5, 1.0, 0.5, 0.5])), "alpha"),
    "alpha < 0": (lambda df: df.with_columns(pl.Series("alpha", [0.5, 0.5, -0.1, 0.5])), "alpha"),
    "null length": (lambda df: df.with_columns(pl.Series("prompt_tokens", [1, None, 2, 3])), "prompt_tokens"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_read_trace_rejects(name: str, tmp_path: Path) -> None:
    corrupt, column = CORRUPTIONS[name]
    path = write_raw(corrupt(good_frame()), tmp_path)
    with pytest.raises(LapsbenchError) as err:
        read_trace(path)
    message = str(err.value)
    assert str(path) in message and column in message and "\n" not in message


def test_write_trace_refuses_invalid_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with pytest.raises(LapsbenchError, match="alpha"):
        write_trace(good_frame().with_columns(pl.lit(1.5).alias("alpha")), out)
    assert list(tmp_path.iterdir()) == []


def test_round_trip_keeps_pass_through_columns(tmp_path: Path) -> None:
    df = good_frame().with_columns(pl.lit("t0").alias("tenant"))
    out = write_trace(df, tmp_path / "t.parquet")
    back = read_trace(out)
    assert back.columns == df.columns and back["tenant"].to_list() == ["t0"] * 4


@st.composite
def valid_frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, 30))
    gaps = draw(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=n, max_size=n))
    ids = draw(st.permutations(list(range(n * 3)))) [:n]
    lengths = st.lists(st.integers(1, 10**6), min_size=n, max_size=n)
    columns = {"request_id": ids, "arrival_s": np.cumsum(gaps).tolist(),
               "prompt_tokens": draw(lengths), "output_tokens": draw(lengths)}
    if draw(st.booleans()):
        columns["alpha"] = draw(st.lists(st.floats(0, 1, exclude_max=True), min_size=n, max_size=n))
    return pl.DataFrame(columns, schema_overrides={"arrival_s": pl.Float64})


@settings(max_examples=60, deadline=None)
@given(valid_frames())
def test_any_valid_frame_passes(df: pl.DataFrame) -> None:
    out = validate_trace(df)
    assert out.height == df.height and out.schema["request_id"] == pl.Int64


BAD_VALUES = {"prompt_tokens": [0, -1], "output_tokens": [0, -7], "arrival_s": [float("nan"), float("inf"), -1.0],
              "alpha": [1.0, 1.5, -0.01, float("nan")], "request_id": ["dup"]}


@settings(max_examples=120, deadline=None)
@given(valid_frames(), st.data())
def test_any_single_corruption_fails_naming_the_column(df: pl.DataFrame, data: st.DataObject) -> None:
    choices = [c for c in BAD_VALUES if c in df.columns and (c != "request_id" or df.height > 1)]
    column = data.draw(st.sampled_from(choices))
    row = data.draw(st.integers(0, df.height - 1))
    value = data.draw(st.sampled_from(BAD_VALUES[column]))
    values = df[column].to_list()
    values[row] = values[(row + 1) % df.height] if value == "dup" else value
    bad = df.with_columns(pl.Series(column, values, dtype=df.schema[column]))
    with pytest.raises(LapsbenchError) as err:
        validate_trace(bad, "frame.parquet")
    assert f"'{column}'" in str(err.value) and "frame.parquet" in str(err.value)
