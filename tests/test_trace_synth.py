"""Synthetic traces: same seed → identical frame; distributions within stated tolerances (fixed seeds, so
these are regression guards as well as sanity checks); SPEC errors name the option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from polars.testing import assert_frame_equal

from lapsbench.errors import LapsbenchError
from lapsbench.trace.schema import validate_trace
from lapsbench.trace.synth import ArrivalStream, parse_length_spec, synth_trace


def test_same_seed_same_frame_and_valid() -> None:
    a = synth_trace(500, 3.0, arrival="gamma", cv=2.0, alpha=(0.7, 20), seed=11)
    assert_frame_equal(a, synth_trace(500, 3.0, arrival="gamma", cv=2.0, alpha=(0.7, 20), seed=11))
    assert not a.equals(synth_trace(500, 3.0, arrival="gamma", cv=2.0, alpha=(0.7, 20), seed=12))
    validate_trace(a)


def test_arrivals_do_not_depend_on_the_length_spec() -> None:
    """Each component has its own SeedSequence child (common random numbers)."""
    a = synth_trace(100, 1.0, output="fixed:5", seed=3)
    b = synth_trace(100, 1.0, output="geometric:mean=50", seed=3)
    assert a["arrival_s"].to_list() == b["arrival_s"].to_list()


def test_arrival_stream_is_split_invariant() -> None:
    one = ArrivalStream(2.0, "gamma", 3.0, np.random.default_rng(5)).next(10)
    stream = ArrivalStream(2.0, "gamma", 3.0, np.random.default_rng(5))
    assert np.array_equal(one, np.concatenate([stream.next(3), stream.next(7)]))
    assert one[0] == 0.0


def test_poisson_rate_and_cv() -> None:
    """Rate estimate (n-1)/span has relative s.d. 1/sqrt(n) = 0.45% at n = 50,000: tolerance 2%; CV 1 ± 3%."""
    t = synth_trace(50_000, 5.0, seed=1)["arrival_s"].to_numpy()
    gaps = np.diff(t)
    assert abs((len(t) - 1) / t[-1] / 5.0 - 1) < 0.02
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.03


def test_gamma_cv() -> None:
    """Gamma(shape 1/9) gaps: the sample CV at n = 50,000 has s.d. about 2%: tolerance 10%."""
    gaps = np.diff(synth_trace(50_000, 5.0, arrival="gamma", cv=3.0, seed=2)["arrival_s"].to_numpy())
    assert abs(gaps.std() / gaps.mean() / 3.0 - 1) < 0.10
    assert abs(1 / gaps.mean() / 5.0 - 1) < 0.10


def test_geometric_and_lognormal_lengths() -> None:
    """Geometric mean 100 (s.d. of the mean 0.45 at n = 50,000): tolerance 2%; lognormal median 130: 3%."""
    df = synth_trace(50_000, 1.0, output="geometric:mean=100", prompt="lognormal:median=130,sigma=1.0", seed=4)
    assert abs(df["output_tokens"].mean() / 100 - 1) < 0.02
    assert abs(df["prompt_tokens"].median() / 130 - 1) < 0.03
    assert df["output_tokens"].min() >= 1 and df["prompt_tokens"].min() >= 1


def test_bounds_fixed_and_uniform() -> None:
    df = synth_trace(2000, 1.0, output="lognormal:median=100,sigma=2,max=300", prompt="uniform:min=5,max=9", seed=0)
    assert df["output_tokens"].max() == 300 and set(df["prompt_tokens"].unique()) == {5, 6, 7, 8, 9}
    assert synth_trace(10, 1.0, output="fixed:128")["output_tokens"].to_list() == [128] * 10


def test_csv_resampling(tmp_path: Path) -> None:
    path = tmp_path / "lengths.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n10,1\n20,2\n30,3\n")
    df = synth_trace(300, 1.0, output=f"csv:{path}", prompt=f"csv:{path}:num_decode_tokens", seed=0)
    assert set(df["output_tokens"].unique()) == {1, 2, 3} and set(df["prompt_tokens"].unique()) == {1, 2, 3}
    joint = synth_trace(300, 1.0, lengths=f"csv:{path}", seed=0)
    assert (joint["prompt_tokens"] == joint["output_tokens"] * 10).all()


def test_alpha_stays_below_one() -> None:
    df = synth_trace(5000, 1.0, alpha=(0.999, 0.5), seed=9)
    assert df["alpha"].max() < 1.0 and df["alpha"].min() >= 0.0
    mean = synth_trace(20_000, 1.0, alpha=(0.7, 20), seed=9)["alpha"].mean()
    assert abs(mean - 0.7) < 0.01


@pytest.mark.parametrize("spec", ["normal:mean=3", "lognormal:median=130", "lognormal:median=1,sigma=1,foo=2",
                                  "geometric:mean=0.5", "fixed:0", "fixed:abc", "uniform:min=9,max=5",
                                  "csv:/no/such/file.csv"])
def test_bad_spec_names_the_option(spec: str) -> None:
    with pytest.raises(LapsbenchError, match="--output-lengths"):
        parse_length_spec(spec, "--output-lengths")


@pytest.mark.parametrize(("kwargs", "match"), [({"rate": 0.0}, "--rate"), ({"arrival": "uniform"}, "--arrival"),
                                               ({"arrival": "gamma"}, "--cv"), ({"cv": 2.0}, "--cv")])
def test_bad_arrival_options(kwargs: dict, match: str) -> None:
    args = {"rate": 1.0} | kwargs
    with pytest.raises(LapsbenchError, match=match):
        synth_trace(10, **args)
