"""`trace info` statistics (on the shipped Azure traces and on known inputs) and `trace slice`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lapsbench.errors import LapsbenchError
from lapsbench.trace.info import dispersion, sparkline, trace_stats
from lapsbench.trace.schema import read_trace
from lapsbench.trace.slicing import slice_trace
from lapsbench.trace.synth import synth_trace

from cli_helpers import lapsbench

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_conv_trace() -> None:
    stats = trace_stats(read_trace(ROOT / "traces/azure_conv_2023.parquet"))
    assert stats["requests"] == 19_366 and round(stats["mean_rate_per_s"], 2) == 5.53
    assert stats["prompt_tokens"]["p50"] == 1020 and stats["output_tokens"]["p50"] == 129


def test_shipped_code_trace_is_bursty() -> None:
    stats = trace_stats(read_trace(ROOT / "traces/azure_code_2023.parquet"))
    assert stats["requests"] == 8_819 and round(stats["mean_rate_per_s"], 2) == 2.57
    assert abs(stats["interarrival_cv"] - 13) < 0.5 and stats["dispersion"]["1s"] > 5


def test_stats_of_a_known_frame() -> None:
    df = pl.DataFrame({"request_id": [0, 1, 2, 3], "arrival_s": [0.0, 1.0, 2.0, 3.0],
                       "prompt_tokens": [1, 2, 3, 4], "output_tokens": [10, 20, 30, 100]})
    stats = trace_stats(df)
    assert stats["span_s"] == 3.0 and stats["mean_rate_per_s"] == 1.0 and stats["interarrival_cv"] == 0.0
    assert stats["spearman"] == pytest.approx(1.0) and 0.8 < stats["pearson"] < 1.0
    assert stats["output_tokens"]["mean"] == 40.0 and stats["dispersion"]["60s"] is None


def test_poisson_dispersion_is_near_one() -> None:
    """Counts of a Poisson process have variance = mean; at 10 s bins over ~20,000 s the estimate is ±5%."""
    t = synth_trace(40_000, 2.0, seed=0)["arrival_s"].to_numpy()
    assert abs(dispersion(t, 10.0) - 1.0) < 0.1


def test_sparkline() -> None:
    assert sparkline([0.0, 1.0, 2.0]) == "▁▅█" and sparkline([0.0, 0.0]) == "▁▁"


def test_info_cli_prints_the_table() -> None:
    result = lapsbench("trace", "info", "traces/azure_conv_2023.parquet")
    assert result.returncode == 0 and "19,366" in result.stdout and "5.53" in result.stdout


def frame(n: int = 100) -> pl.DataFrame:
    return pl.DataFrame({"request_id": np.arange(n), "arrival_s": np.arange(n, dtype=float),
                         "prompt_tokens": np.ones(n, dtype=int), "output_tokens": np.ones(n, dtype=int)})


def test_slice_window_scale_first() -> None:
    out = slice_trace(frame(), start_s=10, duration_s=20, rate_scale=2.0, max_requests=5)
    assert out["request_id"].to_list() == [10, 11, 12, 13, 14] and out["arrival_s"].to_list() == [0, 0.5, 1, 1.5, 2]


def test_slice_sample_is_seeded_and_keeps_order() -> None:
    a = slice_trace(frame(), sample_n=30, seed=1)
    assert a.equals(slice_trace(frame(), sample_n=30, seed=1)) and a.height == 30
    assert a["request_id"].is_sorted() and not a.equals(slice_trace(frame(), sample_n=30, seed=2))
    assert slice_trace(frame(), sample_fraction=0.25, seed=0).height == 25


@pytest.mark.parametrize("kwargs", [{"sample_n": 101}, {"sample_n": 5, "sample_fraction": 0.5},
                                    {"rate_scale": 0.0}, {"start_s": 500.0}])
def test_slice_rejects(kwargs: dict) -> None:
    with pytest.raises(LapsbenchError):
        slice_trace(frame(), **kwargs)


def test_slice_cli_writes_a_canonical_trace(tmp_path: Path) -> None:
    out = tmp_path / "s.parquet"
    result = lapsbench("trace", "slice", "traces/azure_code_2023.parquet", "--out", str(out), "--duration-s", "600",
                       "--sample-fraction", "0.5", "--seed", "3")
    assert result.returncode == 0, result.stderr
    df = read_trace(out)
    assert df["arrival_s"].max() < 600 and 0 < df.height < 8819


def test_synth_cli_is_reproducible(tmp_path: Path) -> None:
    outs = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    for out in outs:
        result = lapsbench("trace", "synth", "--requests", "200", "--rate", "4", "--arrival", "gamma", "--cv", "2",
                           "--output-lengths", "geometric:mean=50", "--alpha-beta", "0.7,20", "--seed", "5", "--out",
                           str(out))
        assert result.returncode == 0, result.stderr
    assert read_trace(outs[0]).equals(read_trace(outs[1]))
    result = lapsbench("trace", "synth", "--requests", "5", "--rate", "1", "--output-lengths", "bogus:1", "--out",
                       str(tmp_path / "c.parquet"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.parquet").exists()
