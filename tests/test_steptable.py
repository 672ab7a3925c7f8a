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


def goodput_direct(i: int, prompt, output, k, cost, acceptance, P) -> tuple[list[int], list[int], list[int]]:
    """Request i's steps under goodput at batch 1, one at a time in plain Python: the K maximising E[tokens | α̂,
    K] / step time at batch 1 (α̂ from its draws so far), the draw at the maximum k capped at K."""
    from lapsbench.models.kchoice import alpha_estimate, expected_tokens
    from lapsbench.models.pricing import mixed_step_time_s, pack_cost

    pack = pack_cost(cost, k)
    p = np.array([prompt[i]])
    tokens, ks = [min(int(output[i]), 1)], [0]
    ns = [int(to_ns(cost.prefill_s(np.array([1]), p, p * p, np.array([0]), np.array([0]), k > 0))[0])]
    generated, step, n_acc, n_rej = tokens[0], 0, 0, 0
    while generated < output[i]:
        a_hat = alpha_estimate(n_acc, n_rej, P.prior_alpha, P.prior_strength)
        ctx = np.array([prompt[i] + generated])
        price = [float(mixed_step_time_s(pack, np.array([kk]), ctx, 1, 0, 0, 0, 0, 0, 0.0))
                 for kk in range(P.k_max + 1)]
        rates = [expected_tokens(a_hat, kk, int(output[i]) - generated) / price[kk] for kk in range(P.k_max + 1)]
        kk = 0
        for j in range(1, P.k_max + 1):  # the first best (ties: the smaller K)
            if rates[j] > rates[kk] * (1 + 1e-12):
                kk = j
        d = int(acceptance.accepted(np.array([i]), np.array([step]), np.array([generated]))[0])
        n_acc += min(d, kk)
        n_rej += d < kk
        e = min(min(d, kk) + 1, int(output[i]) - generated)
        tokens.append(e)
        ns.append(int(to_ns(price[kk])))
        ks.append(kk)
        generated += e
        step += 1
    return tokens, ns, ks


@pytest.mark.parametrize("kind", ["fixed", "empirical"])
@pytest.mark.parametrize("profile", ["fixed", "h100-llama2-7b"])
def test_goodput_table_matches_direct_computation(kind: str, profile: str):
    """Goodput at batch 1 (lapsbench.engine.batch1_goodput): every request's tokens, ns and K per step equal the
    step-by-step computation; K varies (the prior is weak and acceptance spread)."""
    from lapsbench.config.speculation import GoodputSpec
    from lapsbench.engine.batch1_goodput import build_goodput_step_table
    from lapsbench.models.acceptance import EmpiricalAcceptance
    from lapsbench.models.kchoice import pack_adaptive

    g = np.random.default_rng(11)
    n, k = 120, 5
    prompt, output = g.integers(1, 2000, n), g.integers(0, 300, n)
    ids = g.permutation(10 * n)[:n]
    key = rng.stream_key(5, 1, rng.Streams.ACCEPTANCE)
    cost = (fixed_profile(0.01, 0.004, 1e-5) if profile == "fixed"
            else load_profile_file(Path(REPO / "profiles" / f"{profile}.toml"), draft="tinyllama-1.1b"))
    if kind == "fixed":
        acceptance = FixedAcceptance(g.uniform(0, 0.95, n), ids, k, key)
    else:
        acceptance = EmpiricalAcceptance.build([g.integers(1, 7, 30) for _ in range(n)], ids, output, k, key)
    P = pack_adaptive(GoodputSpec(k_max=4, prior_alpha=0.5, prior_strength=1.0), k)
    table = build_goodput_step_table(prompt, output, k, cost, acceptance, P)
    assert table.offset[-1] == table.cum_ns.size == table.cum_tokens.size == table.k_steps.size
    for i in range(0, n, 5):
        tokens, ns, ks = goodput_direct(i, prompt, output, k, cost, acceptance, P)
        rows = slice(table.offset[i], table.offset[i + 1])
        assert table.cum_tokens[rows].tolist() == np.cumsum(tokens).tolist()
        assert table.cum_ns[rows].tolist() == np.cumsum(ns).tolist()
        assert table.k_steps[rows].tolist() == ks
    assert np.array_equal(table.cum_tokens[table.offset[1:] - 1], output)
    decode = table.k_steps[np.setdiff1d(np.arange(table.k_steps.size), table.offset[:-1])]
    assert len(set(decode.tolist())) > 1 and decode.max() <= 4
    assert table.k_stats() == (pytest.approx(decode.mean()), pytest.approx((decode == 0).mean()))


def test_goodput_table_at_the_fixed_k_is_the_fixed_table():
    """With a free draft the most tokens pay best: K = min(k, tokens left − 1) at every step (ties keep the smaller
    K), and the table is the fixed-k table — the draws at the maximum k, capped at K, are its tokens (common
    random numbers) and the price does not depend on K."""
    from lapsbench.config.speculation import GoodputSpec
    from lapsbench.engine.batch1_goodput import build_goodput_step_table
    from lapsbench.models.kchoice import pack_adaptive

    g = np.random.default_rng(2)
    n, k = 80, 3
    prompt, output = g.integers(1, 500, n), g.integers(1, 200, n)
    ids = g.permutation(10 * n)[:n]
    cost = fixed_profile(0.01, 0.0, 1e-5)
    acceptance = FixedAcceptance(g.uniform(0.2, 0.95, n), ids, k, rng.stream_key(5, 1, rng.Streams.ACCEPTANCE))
    fixed = build_step_table(ids, prompt, output, k, cost, acceptance)
    table = build_goodput_step_table(prompt, output, k, cost, acceptance,
                                     pack_adaptive(GoodputSpec(k_max=k, prior_alpha=0.9), k))
    assert np.array_equal(table.offset, fixed.offset)
    assert np.array_equal(table.cum_tokens, fixed.cum_tokens) and table.cum_tokens.dtype == fixed.cum_tokens.dtype
    assert np.array_equal(table.cum_ns, fixed.cum_ns)
    before = np.concatenate(([0], table.cum_tokens[:-1].astype(np.int64)))
    owner = np.repeat(np.arange(n), table.n_steps)
    expected = np.minimum(k, output[owner] - before - 1)
    expected[table.offset[:-1]] = 0  # the prefill drafts nothing
    assert np.array_equal(table.k_steps, expected)
