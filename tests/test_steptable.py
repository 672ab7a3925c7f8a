"""The step table equals a direct, one-request-at-a-time computation of every step's tokens and cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lapsbench.engine.steptable import build_step_table, to_ns
from lapsbench.models import rng
from lapsbench.models.acceptance import FixedAcceptance
from lapsbench.models.cost import fixed_profile, load_profile_file, sd_step_s

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


@pytest.mark.parametrize("kind", ["fixed", "beta", "empirical"])
def test_plain_decoding_table_equals_drawing_one_token_steps(kind: str, monkeypatch):
    """k = 0 builds the table without drawing (every step emits one token): the same table as drawing
    from the acceptance process, across several construction chunks and with one-token outputs."""
    from lapsbench.engine import steptable
    from lapsbench.models.acceptance import BetaAcceptance, EmpiricalAcceptance

    monkeypatch.setattr(steptable, "CHUNK_STEPS", 500)
    g = np.random.default_rng(3)
    n = 200
    prompt, output = g.integers(1, 3000, n), g.integers(1, 40, n)
    output[::9] = 1
    ids = g.permutation(10 * n)[:n]
    key = rng.stream_key(5, 1, rng.Streams.ACCEPTANCE)
    if kind == "fixed":
        acceptance = FixedAcceptance(g.uniform(0, 0.95, n), ids, 0, key)
    elif kind == "beta":
        acceptance = BetaAcceptance.build(g.beta(7, 3, n), ids, output, 0, key,
                                          rng.stream_key(5, 1, rng.Streams.ACCEPTANCE_PARAMS), initial=0.3,
                                          warmup_steps=4.0, ar_phi=0.8, ar_sigma=0.1)
    else:
        acceptance = EmpiricalAcceptance.build([g.integers(1, 7, 30) for _ in range(n)], ids, output, 0, key)
    cost = fixed_profile(0.01, 0.002, 1e-5)
    table = build_step_table(ids, prompt, output, 0, cost, acceptance)
    bounds = steptable._chunks(output, np.ones(n))
    assert len(bounds) > 3
    offset, cum_tokens = steptable._draw(output, 0, acceptance, bounds, np.ones(n))
    assert np.array_equal(table.offset, offset)
    assert table.cum_tokens.dtype == cum_tokens.dtype and np.array_equal(table.cum_tokens, cum_tokens)
    assert np.array_equal(table.n_steps, output)  # the prefill, then one step per further token
    rows = slice(table.offset[5], table.offset[6])
    assert table.cum_ns[rows].tolist() == np.cumsum(direct(5, prompt, output, 0, cost, acceptance)[1]).tolist()
