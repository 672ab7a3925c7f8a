"""The batch-1 engine against exact M/G/1 results (baselines.md §5).

Set-up: `fixed` cost profile (every step 10 ms), k = 0 (plain decoding), prompt cost 0, so a request of L
output tokens needs exactly L·10 ms of service. Poisson arrivals; sizes geometric with mean 100 tokens
(nearly exponential) or a discrete H2 (balanced mixture of geometrics, mean 100, SCV 10). For each policy
and load ρ ∈ {0.5, 0.8}: R independent replications of N jobs, the first 10% of each discarded as
warm-up; the oracle must lie inside the 95% t-interval of the replication means. Seeds are fixed, so the
outcome is deterministic (a regression guard on top of the statistical check)."""

from __future__ import annotations

import numpy as np
import pytest

from lapsbench.models.cost import fixed_profile
from lapsbench.results.metrics import t95

import oracles
from conftest import create_state, run_policy

STEP_S = 0.01
MEAN_TOKENS = 100

DISTRIBUTIONS = {
    "geometric": lambda: oracles.geometric_pmf(MEAN_TOKENS),
    "h2": lambda: oracles.h2_geometric_pmf(MEAN_TOKENS, 10.0)[:2],
}
ORACLES = {"fcfs": oracles.fcfs, "las": oracles.fb, "srpt": oracles.srpt, "rr": oracles.ps}


def sample_sizes(dist: str, n: int, g: np.random.Generator) -> np.ndarray:
    if dist == "geometric":
        return g.geometric(1 / MEAN_TOKENS, n)
    _, _, (p1, m1, m2) = oracles.h2_geometric_pmf(MEAN_TOKENS, 10.0)
    first = g.random(n) < p1
    return np.where(first, g.geometric(1 / m1, n), g.geometric(1 / m2, n))


def replication_means(policy: str, dist: str, rho: float, n_jobs: int, reps: int, seed: int) -> np.ndarray:
    tokens, pmf = DISTRIBUTIONS[dist]()
    lam = rho / (float(np.sum(tokens * pmf)) * STEP_S)
    means = []
    for r in range(reps):
        g = np.random.default_rng([seed, r])
        sizes = sample_sizes(dist, n_jobs, g)
        arrivals = np.cumsum(g.exponential(1 / lam, n_jobs))
        state = run_policy(policy, create_state(arrivals, sizes, cost=fixed_profile(STEP_S)))
        jct = state.finish_s - state.arrival_s
        means.append(jct[n_jobs // 10:].mean())
    return np.array(means)


def oracle_value(policy: str, dist: str, rho: float) -> float:
    tokens, pmf = DISTRIBUTIONS[dist]()
    sizes = tokens * STEP_S
    lam = rho / float(np.sum(sizes * pmf))
    return ORACLES[policy](sizes, pmf, lam)


def check(policy: str, dist: str, rho: float, n_jobs: int, reps: int) -> None:
    means = replication_means(policy, dist, rho, n_jobs, reps, seed=2024)
    half = t95(reps - 1) * means.std(ddof=1) / np.sqrt(reps)
    expected = oracle_value(policy, dist, rho)
    lo, hi = means.mean() - half, means.mean() + half
    assert lo <= expected <= hi, (
        f"{policy} {dist} rho={rho}: oracle {expected:.4f} outside CI [{lo:.4f}, {hi:.4f}] "
        f"(mean {means.mean():.4f})")


def test_oracle_reference_values():
    """The oracle code reproduces baselines.md §5.4 for Exp(1) at ρ = 0.8 (fine geometric ≈ exponential)."""
    tokens, pmf = oracles.geometric_pmf(2000)
    x = tokens / 2000
    lam = 0.8 / float(np.sum(x * pmf))
    assert oracles.fcfs(x, pmf, lam) == pytest.approx(5.0, rel=2e-3)
    assert oracles.ps(x, pmf, lam) == pytest.approx(5.0, rel=2e-3)
    assert oracles.srpt(x, pmf, lam) == pytest.approx(2.3528, rel=5e-3)
    d = np.array([1.0])
    assert oracles.fb(d, np.array([1.0]), 0.8) == pytest.approx(15.0)
    assert oracles.fcfs(d, np.array([1.0]), 0.8) == pytest.approx(3.0)


@pytest.mark.parametrize("rho", [0.5, 0.8])
@pytest.mark.parametrize("dist", ["geometric", "h2"])
@pytest.mark.parametrize("policy", ["fcfs", "las", "srpt", "rr"])
def test_policy_matches_queueing_theory(policy: str, dist: str, rho: float):
    check(policy, dist, rho, n_jobs=10000, reps=8)


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.5, 0.8])
@pytest.mark.parametrize("dist", ["geometric", "h2"])
@pytest.mark.parametrize("policy", ["fcfs", "las", "srpt", "rr"])
def test_policy_matches_queueing_theory_long(policy: str, dist: str, rho: float):
    check(policy, dist, rho, n_jobs=20000, reps=20)


def test_oracles_distinguish_policies():
    """The check has power: on H2 sizes at ρ = 0.8, FCFS's oracle is far outside LAS's interval."""
    means = replication_means("las", "h2", 0.8, 10000, 8, seed=2024)
    half = t95(7) * means.std(ddof=1) / np.sqrt(8)
    assert abs(oracle_value("fcfs", "h2", 0.8) - means.mean()) > 3 * half
