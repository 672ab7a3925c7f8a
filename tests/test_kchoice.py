"""K choosers of `[speculation] adaptive` (lapsbench.models.kchoice, issue 18): hand-computed cases, and the per-request
goodput choice against brute force where it is claimed exact."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lapsbench.config.speculation import VLLM_TABLE, BatchTableSpec, GoodputSpec, OffUnderLoadSpec
from lapsbench.models.cost import CostModel, PhaseModel
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
    sort_by_alpha,
)
from lapsbench.models.pricing import mixed_step_time_s, pack_cost

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


# a fitted-form profile small enough to price by hand (ms): verify 1 + 0.1·tokens, draft forward 0.2 + 0.05·batch
HAND = CostModel(name="hand", target=PhaseModel({"const": 1.0, "tokens": 0.1}),
                 draft=PhaseModel({"const": 0.2, "batch": 0.05}))
NO_PREFILL = (0, 0, 0, 0, 0, 0.0)


def per_request(pack, alpha, rem, ctx, k_max: int, prefill=NO_PREFILL) -> tuple[np.ndarray, float]:
    n = alpha.size
    out = np.full(n, -1, np.int64)
    got = goodput_per_request_k(pack, alpha, rem, ctx, n, k_max, prefill, np.zeros(n, np.int64), np.zeros(n),
                                np.zeros((3, k_max), np.int64), out)
    return out, got


def rate(pack, ks, alpha, rem, ctx, prefill=NO_PREFILL) -> float:
    """Expected tokens per second of the mixed-K step `ks`, priced by the engine's pricing."""
    tokens = sum(expected_tokens(a, int(k), int(r)) for a, k, r in zip(alpha, ks, rem, strict=True))
    return tokens / mixed_step_time_s(pack, np.asarray(ks, np.int64), ctx, alpha.size, *prefill)


def test_goodput_per_request_hand_case() -> None:
    """α = (0.9, 0.6, 0.1), k_max 3, nothing prefilled (times in ms). K = 0: 3 tokens / verify(3) 1.3 = 2.308.
    Position 0, best α first: row 0 — 3.9 / (verify(4) 1.4 + draft(1) 0.25) = 2.364; rows 0, 1 — 4.5 / (1.5 +
    0.3) = 2.5; all three — 4.6 / (1.6 + 0.35) = 2.359: rows 0, 1. Position 1: row 0 — 5.31 / (1.6 + 0.3 + 0.25)
    = 2.470; rows 0, 1 — 5.67 / (1.7 + 0.3 + 0.3) = 2.465; both below 2.5, so the walk stops: K = (1, 1, 0),
    price 1.8 ms, 2,500 tokens/s — also the brute-force optimum over {0..3}³."""
    pack = pack_cost(HAND, 3)
    alpha, rem, ctx = np.array([0.9, 0.6, 0.1]), np.array([100, 100, 100]), np.array([10, 20, 30])
    out, got = per_request(pack, alpha, rem, ctx, 3)
    assert list(out) == [1, 1, 0]
    assert mixed_step_time_s(pack, out, ctx, 3, *NO_PREFILL) == pytest.approx(1.8e-3, rel=1e-12)
    assert got == pytest.approx(2500.0, rel=1e-12)
    brute = max(itertools.product(range(4), repeat=3), key=lambda ks: rate(pack, ks, alpha, rem, ctx))
    assert tuple(out) == brute


def test_goodput_per_request_position_by_position() -> None:
    """α = (0.9, 0.1), draft forward 0.2 whatever the batch: row 0 alone drafts, and keeps drafting while it
    pays — position 0: 2.9 / 1.5 = 1.933 (> 2 / 1.2 and > 3.0 / 1.6); position 1: 3.71 / 1.8 = 2.061; position
    2: 4.439 / 2.1 = 2.114. K = (3, 0) at k_max 3; (2, 0) at k_max 2."""
    flat = CostModel(name="flat", target=PhaseModel({"const": 1.0, "tokens": 0.1}), draft=PhaseModel({"const": 0.2}))
    pack = pack_cost(flat, 3)
    alpha, rem, ctx = np.array([0.9, 0.1]), np.array([100, 100]), np.array([5, 5])
    out, got = per_request(pack, alpha, rem, ctx, 3)
    assert list(out) == [3, 0] and got == pytest.approx(4.439 / 2.1e-3)
    out, got = per_request(pack, alpha, rem, ctx, 2)
    assert list(out) == [2, 0] and got == pytest.approx(3.71 / 1.8e-3)


def test_goodput_per_request_respects_remaining() -> None:
    """A row with one token left (or padding, 0 left) drafts nothing, whatever its acceptance."""
    pack = pack_cost(HAND, 3)
    out, _ = per_request(pack, np.array([0.99, 0.9, 0.99]), np.array([1, 100, 0]), np.array([8, 8, 8]), 3)
    assert out[0] == 0 and out[2] == 0 and out[1] > 0


def random_profile(g) -> CostModel:
    """Verify and draft costs increasing in tokens, batch and context, with a prefill term."""
    return CostModel(name="random",
                     target=PhaseModel({"const": float(g.uniform(1, 5)), "tokens": float(g.uniform(0, 0.5)),
                                        "context": float(g.uniform(0, 0.01))}),
                     target_prefill=PhaseModel({"const": 1.0, "tokens": float(g.uniform(0, 0.05))}),
                     draft=PhaseModel({"const": float(g.uniform(0.05, 1)), "batch": float(g.uniform(0, 0.3))}))


def test_goodput_per_request_exact_at_one_position() -> None:
    """k_max = 1: the chooser equals brute force over all 2^n choices (random α, profiles, contexts, prefill);
    what it reports is the engine's price of its choice."""
    g = np.random.default_rng(7)
    for _ in range(60):
        n = int(g.integers(1, 7))
        pack = pack_cost(random_profile(g), 1)
        alpha = g.uniform(0.05, 0.95, n)
        rem, ctx = g.integers(1, 5, n), g.integers(1, 500, n)
        chunk = int(g.integers(0, 3)) * 50
        prefill = (int(chunk > 0), chunk, chunk * chunk, 0, 0, 0.0)
        out, got = per_request(pack, alpha, rem, ctx, 1, prefill)
        best = max(rate(pack, ks, alpha, rem, ctx, prefill) for ks in itertools.product(range(2), repeat=n))
        assert got == pytest.approx(rate(pack, out, alpha, rem, ctx, prefill), rel=1e-12)
        assert got == pytest.approx(best, rel=1e-12)


def test_sort_by_alpha() -> None:
    """The per-request chooser's candidate order: by (−α, index), ties by index."""
    g = np.random.default_rng(3)
    for m in range(0, 40):
        alpha = np.round(g.uniform(0, 1, m), 1)  # many ties
        rows = g.permutation(m).astype(np.int64)
        sort_by_alpha(alpha, rows, m)
        assert list(rows) == sorted(range(m), key=lambda r: (-alpha[r], r))
