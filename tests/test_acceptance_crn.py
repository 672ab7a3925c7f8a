"""Common random numbers across draft lengths (issue 18, part 2): every acceptance process's draws at its maximum
k answer any K' <= k as min(accepted, K') + 1, equal to the process built with k = K' on many draws; at K' = k
bit-identical to `emitted`; K' above the process's k or the records' K is one line."""

from __future__ import annotations

import numpy as np
import pytest

from lapsbench.errors import LapsbenchError
from lapsbench.models.acceptance import (
    BetaAcceptance,
    EmpiricalAcceptance,
    FixedAcceptance,
    accepted_table,
    emitted_at,
)

N, K_MAX = 400, 6
RID = np.arange(1000, 1000 + N)
KEY = np.uint64(0x1234_5678_9ABC_DEF1)
OUT = np.random.default_rng(3).integers(2, 300, N)
LISTS = [np.random.default_rng(i).integers(1, K_MAX + 2, int(n)) for i, n in
         enumerate(np.random.default_rng(4).integers(2, 80, N))]  # shorter than most outputs: cyclic replay


def fixed(k: int):
    return FixedAcceptance(np.random.default_rng(1).uniform(0.0, 0.95, N), RID, k, KEY)


def beta(k: int):
    alpha = np.random.default_rng(2).beta(7, 3, N)
    return BetaAcceptance.build(alpha, RID, OUT, k, KEY, np.uint64(99), initial=0.4, warmup_steps=5.0,
                                ar_phi=0.8, ar_sigma=0.05)


def empirical(k: int):
    return EmpiricalAcceptance.build(LISTS, RID, OUT, k, KEY)


def draws(n: int = 30):
    """(request, decode step) pairs covering every request's first steps."""
    req = np.repeat(np.arange(N), n)
    return req, np.tile(np.arange(n), N)


@pytest.mark.parametrize("make", [fixed, beta], ids=["fixed", "beta"])
@pytest.mark.parametrize("k", range(K_MAX + 1))
def test_step_indexed_crn(make, k: int) -> None:
    """fixed, beta: emitted at K' through the maximum-k draws == the process built with k = K'."""
    req, step = draws()
    top = make(K_MAX)
    pos = np.zeros_like(step)  # not read by step-indexed processes
    assert np.array_equal(emitted_at(top, req, step, pos, k), make(k).emitted(req, step, pos))


@pytest.mark.parametrize("k", range(K_MAX + 1))
def test_empirical_crn(k: int) -> None:
    """empirical: walking each request's positions with min(accepted, K') + 1 from the K_MAX process gives the
    step sequence of the process built with k = K' (a chain draft's first K' positions)."""
    top, ref = empirical(K_MAX), empirical(k)
    pos = np.ones(N, np.int64)
    step = np.zeros(N, np.int64)
    live = np.flatnonzero(pos < OUT)
    checked = 0
    while live.size:
        e = emitted_at(top, live, step[live], pos[live], k)
        assert np.array_equal(e, ref.emitted(live, step[live], pos[live]))
        checked += live.size
        pos[live] += e
        step[live] += 1
        live = live[pos[live] < OUT[live]]
    assert checked > N * 10


@pytest.mark.parametrize("make", [fixed, beta, empirical], ids=["fixed", "beta", "empirical"])
def test_bit_identical_at_k_and_refused_above(make) -> None:
    p = make(4)
    req, step = draws(10)
    pos = step + 1
    if p.indexed_by == "position":  # the process's own step sequence starts at these positions
        pos = 1 + np.concatenate([np.concatenate(([0], np.cumsum(p.emitted(np.full(10, r), np.arange(10), 0))[:-1]))
                                  for r in range(N)])
    live = pos < OUT[req]  # steps the request runs (past its end the precomputed sequence repeats)
    req, step, pos = req[live], step[live], pos[live]
    assert np.array_equal(emitted_at(p, req, step, pos, 4), p.emitted(req, step, pos))
    with pytest.raises(LapsbenchError, match="K = 5") as err:
        emitted_at(p, req, step, pos, 5)
    assert "\n" not in str(err.value)


def test_empirical_record_k_refused() -> None:
    """Records whose longest acc_len is 4 (measured at K = 3) cannot answer K' = 4, even under a larger k."""
    lists = [np.array([1, 4, 2, 3]), np.array([1, 1, 4])]
    p = EmpiricalAcceptance.build(lists, np.arange(2), np.array([20, 20]), 6, KEY)
    assert p.record_k == 3
    assert list(emitted_at(p, np.array([0, 0]), np.array([0, 1]), np.array([1, 3]), 3)) == [4, 3]
    with pytest.raises(LapsbenchError, match="replay at most K = 3"):
        emitted_at(p, np.array([0]), np.array([0]), np.array([1]), 4)


def test_empirical_hand_case() -> None:
    """Record [·, 5, 1, 4]: under K' = 1 the steps start at positions 1, 3 and emit min(acc_len, 2) = 2, 2."""
    p = EmpiricalAcceptance.build([np.array([1, 5, 1, 4])], np.arange(1), np.array([4]), 4, KEY)
    assert list(emitted_at(p, np.array([0, 0]), np.array([0, 1]), np.array([1, 3]), 1)) == [2, 2]
    assert list(emitted_at(p, np.array([0]), np.array([0]), np.array([1]), 4)) == [5]  # the engine caps at output


@pytest.mark.parametrize("make", [fixed, beta, empirical], ids=["fixed", "beta", "empirical"])
def test_accepted_table_matches_draws(make) -> None:
    p = make(K_MAX)
    table, offset = accepted_table(p, OUT)
    assert offset[-1] + OUT[-1] == table.size
    req = np.repeat(np.arange(N), OUT - 1)
    i = np.concatenate([np.arange(n - 1) for n in OUT])
    if p.indexed_by == "position":
        i = i + 1
        want = p.accepted(req, np.zeros_like(i), i)
    else:
        want = p.accepted(req, i, np.zeros_like(i))
    assert np.array_equal(table[offset[req] + i], want)
    assert table.max() <= K_MAX and table.min() >= 0
