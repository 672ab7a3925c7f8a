"""K choosers of `[speculation] adaptive` (lapsbench.models.kchoice, issue 18): hand-computed cases, and the per-request
goodput choice against brute force where it is claimed exact."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lapsbench.config.speculation import VLLM_TABLE, BatchTableSpec, GoodputSpec, OffUnderLoadSpec
from lapsbench.models.kchoice import (
    BATCH_TABLE,
    FIXED,
    GOODPUT,
    OFF_UNDER_LOAD,
    alpha_estimate,
    batch_table_k,
    choose_shared_k,
    expected_tokens,
    goodput_per_request_k,
    goodput_shared_k,
    off_under_load_k,
    pack_adaptive,
)

EMPTY_F, EMPTY_I = np.zeros(0), np.zeros(0, np.int64)


@pytest.mark.parametrize("n,k", [(0, 5), (1, 5), (16, 5), (17, 4), (32, 4), (33, 3), (64, 3), (65, 1), (128, 1),
                                 (129, 0), (512, 0), (10**6, 0)])
def test_batch_table_is_vllm_dynamic_sd(n: int, k: int) -> None:
    """vLLM's documented table: K = 5/4/3/1/0 for batch 1–16/17–32/33–64/65–128/129+."""
    P = pack_adaptive(BatchTableSpec(table=VLLM_TABLE), 6)
    assert P.code == BATCH_TABLE and P.k_max == 5
    assert batch_table_k(P.table_batch, P.table_k, n) == k
    assert choose_shared_k(P, n, EMPTY_F, EMPTY_I, EMPTY_F) == k


def test_off_under_load() -> None:
    P = pack_adaptive(OffUnderLoadSpec(batch=64), 4)
    assert P.code == OFF_UNDER_LOAD
    assert [off_under_load_k(4, 64, n) for n in (1, 63, 64, 500)] == [4, 4, 0, 0]
    assert [choose_shared_k(P, n, EMPTY_F, EMPTY_I, EMPTY_F) for n in (63, 64)] == [4, 0]


def test_fixed_pack_is_k() -> None:
    P = pack_adaptive(None, 3)
    assert P.code == FIXED and choose_shared_k(P, 100, EMPTY_F, EMPTY_I, EMPTY_F) == 3


def test_alpha_estimate_and_expected_tokens() -> None:
    assert alpha_estimate(0, 0, 0.7, 4.0) == pytest.approx(0.7)                    # the prior alone
    assert alpha_estimate(6, 2, 0.5, 2.0) == pytest.approx((0.5 * 2 + 6) / (2 + 8))  # 0.7
    assert expected_tokens(0.5, 3, 100) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_tokens(0.5, 3, 100) == pytest.approx((1 - 0.5**4) / (1 - 0.5))  # the closed form
    assert expected_tokens(0.5, 3, 2) == pytest.approx(1.5)  # one token of draft room left
    assert expected_tokens(0.5, 3, 1) == pytest.approx(1.0)
    assert expected_tokens(1.0, 3, 100) == pytest.approx(4.0)  # α → 1: K + 1


def test_goodput_shared_hand_cases() -> None:
    """α = 0.5 for two requests: tokens 2 / 3 / 3.5 at K = 0 / 1 / 2."""
    alpha, rem = np.array([0.5, 0.5]), np.array([100, 100])
    assert goodput_shared_k(alpha, rem, np.array([1.0, 1.2, 1.6])) == 1   # 2.0, 2.5, 2.19 tokens/s
    assert goodput_shared_k(alpha, rem, np.array([1.0, 1.6])) == 0        # 2.0 vs 1.875
    assert goodput_shared_k(alpha, rem, np.array([1.0, 1.5])) == 0        # a tie (2.0 = 2.0) keeps the smaller K
    assert goodput_shared_k(alpha, np.array([1, 1]), np.array([1.0, 1.01])) == 0  # nothing left to draft for
    P = pack_adaptive(GoodputSpec(k_max=2), 4)
    assert P.code == GOODPUT and P.k_max == 2
    assert choose_shared_k(P, 2, alpha, rem, np.array([1.0, 1.2, 1.6])) == 1


def step_time(ks, base: float, verify: np.ndarray, draft: np.ndarray) -> float:
    """The mixed-K step price the chooser assumes: verify Σ(K_i + 1) tokens, draft forward j over K_i > j."""
    ks = np.asarray(ks)
    t = base + verify[min(int((ks + 1).sum()), verify.size - 1)]
    return t + sum(draft[int((ks > j).sum())] for j in range(int(ks.max()) if ks.size else 0))


def rate(ks, alpha, rem, base, verify, draft) -> float:
    tokens = sum(expected_tokens(a, int(k), int(r)) for a, k, r in zip(alpha, ks, rem, strict=True))
    return tokens / step_time(ks, base, verify, draft)


def test_goodput_per_request_hand_case() -> None:
    """α = (0.9, 0.1), verify 1 + 0.1·t, draft forward 0.2: position 0 — request 0 alone (2.9 / 1.5 = 1.933 >
    3.0 / 1.6 and > 2 / 1.2); position 1 — request 0 again (3.71 / 1.8 = 2.061). K = (2, 0), the brute-force
    optimum over {0, 1, 2}²."""
    alpha, rem = np.array([0.9, 0.1]), np.array([100, 100])
    verify = 1.0 + 0.1 * np.arange(7)
    draft = np.array([0.0, 0.2, 0.2, 0.2])
    out = np.full(2, -1, np.int64)
    got = goodput_per_request_k(alpha, rem, 2, 0.0, verify, draft, out)
    assert list(out) == [2, 0] and got == pytest.approx(3.71 / 1.8)
    brute = max(itertools.product(range(3), repeat=2), key=lambda ks: rate(ks, alpha, rem, 0.0, verify, draft))
    assert tuple(out) == brute


def test_goodput_per_request_respects_remaining() -> None:
    """A request with one token left drafts nothing, whatever its acceptance."""
    out = np.zeros(2, np.int64)
    goodput_per_request_k(np.array([0.99, 0.9]), np.array([1, 100]), 3, 0.0, 1.0 + 0.01 * np.arange(9),
                          np.array([0.0, 0.01, 0.01, 0.01]), out)
    assert out[0] == 0 and out[1] == 3


def test_goodput_per_request_exact_at_one_position() -> None:
    """k_max = 1: the chooser equals brute force over all 2^n choices (random α, costs increasing in tokens)."""
    g = np.random.default_rng(7)
    for _ in range(60):
        n = int(g.integers(1, 7))
        alpha = g.uniform(0.05, 0.95, n)
        rem = g.integers(1, 5, n)
        verify = np.cumsum(g.uniform(0.0, 0.3, 2 * n + 1)) + 1.0
        draft = np.concatenate(([0.0], 0.1 + np.cumsum(g.uniform(0.0, 0.05, n))))
        base = float(g.uniform(0, 0.5))
        out = np.zeros(n, np.int64)
        got = goodput_per_request_k(alpha, rem, 1, base, verify, draft, out)
        best = max(rate(ks, alpha, rem, base, verify, draft) for ks in itertools.product(range(2), repeat=n))
        assert got == pytest.approx(rate(out, alpha, rem, base, verify, draft))  # reports what it chose
        assert got == pytest.approx(best)
