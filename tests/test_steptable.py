"""The step table equals a direct, one-request-at-a-time computation of every step's tokens and cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lapsbench import rng
from lapsbench.acceptance import FixedAcceptance
from lapsbench.costmodel import fixed_profile, load_profile_file, sd_step_s
from lapsbench.steptable import build_step_table, to_ns

from conftest import REPO


def direct(i: int, prompt, output, k, cost, acceptance) -> tuple[list[int], list[int]]:
    p = np.array([prompt[i]])
    tokens = [1]
    ns = [int(to_ns(cost.prefill_s(np.array([1]), p, p * p, np.array([0]), np.array([0]), k > 0))[0])]
    generated, step = 1, 0
    while generated < output[i]:
        e = int(acceptance.emitted(np.array([i]), np.array([step]), np.array([generated]))[0])
        e = min(e, int(output[i]) - generated)
        ns.append(int(to_ns(sd_step_s(cost, k, np.array([1]), np.array([prompt[i] + generated])))[0]))
        tokens.append(e)
        generated += e
        step += 1
    return tokens, ns


@pytest.mark.parametrize("k", [0, 1, 4])
@pytest.mark.parametrize("profile", ["fixed", "h100-llama2-7b"])
def test_table_matches_direct_computation(k: int, profile: str):
    g = np.random.default_rng(k)
    n = 300
    prompt, output = g.integers(1, 3000, n), g.integers(1, 400, n)
    ids = g.permutation(10 * n)[:n]
    cost = (fixed_profile(0.01, 0.002, 1e-5) if profile == "fixed"
            else load_profile_file(Path(REPO / "profiles" / f"{profile}.toml")))
    acceptance = FixedAcceptance(g.uniform(0, 0.95, n), ids, k, rng.stream_key(5, 1, rng.Streams.ACCEPTANCE))
    table = build_step_table(ids, prompt, output, k, cost, acceptance)
    assert table.offset[-1] == table.cum_ns.size == table.cum_tokens.size
    for i in range(0, n, 7):
        tokens, ns = direct(i, prompt, output, k, cost, acceptance)
        rows = slice(table.offset[i], table.offset[i + 1])
        assert table.cum_tokens[rows].tolist() == np.cumsum(tokens).tolist()
        assert table.cum_ns[rows].tolist() == np.cumsum(ns).tolist()
    assert np.array_equal(table.cum_tokens[table.offset[1:] - 1], output)
