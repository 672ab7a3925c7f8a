"""Each paper scheduler's defining behaviour, on hand-built timelines (fixed profile: every step 1 s
unless stated), plus SSJF against Cobham's non-preemptive priority formula (baselines.md §5.2)."""

from __future__ import annotations

import numpy as np
import pytest

from lapsbench.errors import LapsbenchError
from lapsbench.models import rng
from lapsbench.models.acceptance import FixedAcceptance
from lapsbench.models.cost import fixed_profile, load_profile_file
from lapsbench.models.predictors import bucket_of, confusion_matrix
from lapsbench.results.metrics import t95
from lapsbench.schedulers import make_policy
from lapsbench.schedulers.laps_sd import estimate
from lapsbench.schedulers.stepwise import Bound

import oracles
from conftest import REPO, create_acceptance, create_state, run_policy, simulate
from reference_engine import reference_run


def served(state, steps, generated):
    """Put requests in a given state: steps taken, tokens generated (decode steps and drafts follow)."""
    state.steps[:] = steps
    state.generated[:] = generated
    state.decode_steps[:] = np.maximum(state.steps - 1, 0)
    state.drafted[:] = state.k * state.decode_steps


def test_las_preempts_a_long_request_for_a_new_one():
    """id 0: 10 tokens at t=0; id 1: 2 tokens at t=3.5. LAS: 0 runs 0..4, 1 preempts (least served)
    and runs 4..6, then 0 resumes and finishes at 12."""
    state = run_policy("las", create_state([0.0, 3.5], [10, 2]))
    assert state.finish_s.tolist() == [12.0, 6.0]
    assert state.preemptions.tolist() == [1, 0]


def test_ssjf_never_preempts():
    """A long job runs; a much shorter one arrives: SSJF (even with an oracle predictor) lets the long one
    finish first (id 0 done at 10, id 1 at 12); FCFS-like only among started jobs."""
    state = run_policy("ssjf", create_state([0.0, 0.5, 0.6], [10, 2, 30]), predictor="oracle")
    assert state.finish_s.tolist() == [10.0, 12.0, 42.0]
    assert state.preemptions.sum() == 0


def test_ssjf_orders_the_queue_by_prediction_and_guard_switches_to_waiting_time():
    arrivals, sizes = [0.0, 0.1, 0.2, 0.3], [5, 40, 3, 2]
    plain = run_policy("ssjf", create_state(arrivals, sizes), predictor="oracle")
    assert plain.finish_s.tolist() == [5.0, 50.0, 10.0, 7.0]   # 0, then 3 (2), 2 (3), 1 (40)
    guarded = run_policy("ssjf", create_state(arrivals, sizes), predictor="oracle", starvation_s=4.0)
    assert guarded.finish_s.tolist() == [5.0, 45.0, 48.0, 50.0]  # at t=5 the oldest waited 4.9 s > 4


def laps_case():
    state = create_state([0.0], [200], k=4, cost=fixed_profile(0.01, 0.001))
    state.seed = 3
    acc = FixedAcceptance(np.array([0.6]), state.request_id, 4, rng.stream_key(3, 0, rng.Streams.ACCEPTANCE))
    return state, acc


def test_laps_sd_becomes_perceptible_exactly_when_the_rule_fires():
    state, acc = laps_case()
    policy = make_policy("laps-sd", {"window": 4, "tolerance": 0.05, "min_steps": 6})
    # the reference run keeps the packed tuple (the compiled engine equals it: tests/test_policy_conformance.py)
    P = reference_run(state, policy, acc).P
    # the rule, recomputed independently from the acceptance draws
    draws = acc.emitted(np.zeros(60, np.int64), np.arange(60), np.zeros(60, np.int64))
    gen = 1 + np.cumsum(draws)  # generated after speculative step s (1-based index s-1)
    est = (gen - 1 - np.arange(1, 61)) / (4 * np.arange(1, 61))
    fire = next(s for s in range(6, 60) if abs(est[s - 1] - est[s - 5]) <= 0.05 * est[s - 1])
    assert P.perceptible_at[0] == fire


def test_laps_sd_orders_perceptible_by_estimated_remaining_time():
    cost = fixed_profile(0.01, 0.001)
    state = create_state([0.0, 0.0, 0.0, 0.0], [300, 300, 300, 300], k=4, cost=cost)
    policy = make_policy("laps-sd", {"predictor": "oracle", "unit": "steps", "base_quantum": 1000.0})
    b = Bound(policy, state)
    # all in queue 0; 0 non-perceptible; 1..3 perceptible. 1: 20 speculative steps, 81 tokens (A = 0.75,
    # 219 left); 2: 20 steps, 41 tokens (A = 0.25, 259 left); 3: 40 steps, 81 tokens (A = 0.25, 219 left)
    served(state, [21, 21, 21, 41], [81, 81, 41, 81])
    b.P.perceptible[1:] = True
    active = np.arange(4)
    t = b.keys(active[1:])[:, 2]             # perceptible: (level, 0, T)
    assert t[0] < t[2] < t[1]                  # 1 (fast, short) < 3 (slow, short) < 2 (long)
    assert b.order(active, 0.0).tolist() == [1, 3, 2, 0]
    # the T formula: (k·L·T_draft + L·T_verify) / (k·A + 1)
    assert t[0] == pytest.approx((4 * 219 * 0.001 + 219 * 0.01) / (4 * 0.75 + 1))
    assert t[2] == pytest.approx((4 * 219 * 0.001 + 219 * 0.01) / (4 * 0.25 + 1))


def test_laps_sd_global_srpt_lets_perceptible_requests_leave_the_ladder():
    cost = fixed_profile(0.01)
    state = create_state([0.0, 0.0, 0.0], [300, 300, 300], k=4, cost=cost)
    policy = make_policy("laps-sd", {"predictor": "oracle", "unit": "steps", "base_quantum": 4.0,
                                     "perceptible_policy": "global-srpt"})
    b = Bound(policy, state)
    served(state, [30, 2, 30], [100, 3, 100])  # 0 and 2 deep in the ladder (queue 2), 1 fresh (queue 0)
    b.P.perceptible[0] = True      # 0 perceptible: in the global class with 2, by estimate
    assert b.order(np.arange(3), 0.0).tolist() == [1, 0, 2]


def test_laps_sd_global_srpt_does_not_strand_requests_that_never_turn_perceptible():
    """A request demoted past the top queue before its acceptance is judged stable joins the global class by
    its estimate (from the acceptance observed so far), instead of waiting behind every perceptible request
    (the old placement: request 0 below request 1 for as long as perceptible requests keep coming)."""
    state = create_state([0.0, 0.0], [60, 600], k=4, cost=fixed_profile(0.01))
    policy = make_policy("laps-sd", {"predictor": "oracle", "unit": "steps", "base_quantum": 4.0,
                                     "perceptible_policy": "global-srpt"})
    b = Bound(policy, state)
    served(state, [8, 30], [20, 100])
    b.P.perceptible[1] = True      # 1 perceptible with 500 tokens left; 0 not, with 40 left
    assert b.order(np.arange(2), 0.0).tolist() == [0, 1]


def test_laps_sd_perceived_places_perceptible_requests_by_estimated_remaining_service():
    """Ladder in steps with bounds 5 and 20. 0: 30 steps attained (level 2 by attained service), perceptible,
    4 tokens left at A = 0.75 (1 step by estimate: level 0); 1: 10 steps attained (level 1), not perceptible;
    2: fresh (level 0), not perceptible. "perceived": 0 joins level 0, ahead of 2 (perceptible first), then
    1. "queue": 0 stays in level 2, behind both."""
    state = create_state([0.0, 0.0, 0.0], [125, 300, 300], k=4, cost=fixed_profile(0.01, 0.001))
    orders = {}
    for placement in ("perceived", "queue"):
        policy = make_policy("laps-sd", {"predictor": "oracle", "unit": "steps", "thresholds": [5.0, 20.0],
                                         "perceptible_policy": placement})
        b = Bound(policy, state)
        served(state, [31, 10, 0], [121, 20, 0])  # 0: 30 speculative steps, 90 accepted drafts of 120: A = 0.75
        b.P.perceptible[0] = True
        assert estimate(b.P, b.R, 0)[1] == pytest.approx(4 / 4)  # remaining steps: 4 tokens at 4 a step
        orders[placement] = b.order(np.arange(3), 0.0).tolist()
    assert orders == {"perceived": [0, 2, 1], "queue": [2, 1, 0]}
    assert make_policy("laps-sd").perceptible_policy == "perceived"   # the default


def test_laps_sd_default_ladder_covers_a_median_prefill_and_the_stability_rule():
    """q0 = prefill of the median prompt + max(min_steps, window + 1) speculative steps at that context
    (fixed profile: prefill 0.01 + 1e-4·prompt s, a step 4·0.001 + 0.01 s), then geometric (ratio 2)."""
    state = create_state([0.0, 0.0, 0.0], [10, 10, 10], prompt_tokens=[100, 200, 900], k=4,
                         cost=fixed_profile(0.01, 0.001, 1e-4))
    policy = make_policy("laps-sd")
    q0 = (0.01 + 1e-4 * 200) + 10 * (4 * 0.001 + 0.01)
    assert policy.first_quantum_floor(state) == pytest.approx(q0)
    derived = policy.derive(state)["thresholds"]
    np.testing.assert_allclose(derived, q0 * (2.0 ** np.arange(1, 8) - 1))
    steps = make_policy("laps-sd", {"unit": "steps", "window": 12})
    assert steps.first_quantum_floor(state) == 1 + 13      # the rule first fires after window + 1 steps


def test_laps_sd_warns_once_when_a_user_quantum_is_too_short(capsys):
    state = create_state([0.0], [10], prompt_tokens=[100], k=4, cost=fixed_profile(0.01, 0.001))
    make_policy("laps-sd", {"base_quantum": 0.02}).derive(state)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lapsbench: warning:") and "base_quantum" in err[0]
    make_policy("laps-sd", {"base_quantum": 1.0}).derive(state)
    assert capsys.readouterr().err == ""


def test_perceptible_steps_match_the_policy():
    """The schedule-free stability check (used by the report) gives the step the policy itself records."""
    from lapsbench.schedulers.laps_sd import perceptible_steps

    from conftest import table_for

    state, acc = laps_case()
    policy = make_policy("laps-sd", {"window": 4, "tolerance": 0.05, "min_steps": 6})
    table = table_for(state, acc)
    P = reference_run(state, policy, acc).P
    assert perceptible_steps(table, 4, 4, 0.05, 6).tolist() == P.perceptible_at.tolist()
    assert P.perceptible_at[0] > 0


def test_quantile_cuts_follow_ssjf():
    """Cuts just above the p25/p50/p75/p99, as SSJF's Vicuna cuts sit just above its data's quantiles."""
    from lapsbench.models.predictors import quantile_cuts

    assert quantile_cuts(np.arange(1, 101)) == (26, 51, 76, 100)
    assert quantile_cuts(np.full(50, 7)) == (8,)   # equal quantiles merge into one cut


def test_skip_join_places_a_long_prompt_request_in_a_lower_queue():
    cost = load_profile_file(REPO / "profiles" / "h100-llama3-8b.toml")
    state = create_state([0.0, 0.0, 0.0], [10, 10, 10], prompt_tokens=[50, 1000, 8000], k=4, cost=cost)
    policy = make_policy("skip-join-mlfq")
    level = policy.pack(state).level
    assert level[0] == 0 and 0 < level[1] < level[2]


def test_mlfq_demotes_after_its_quantum():
    """Quantum 2 s · 2^level, step 1 s: id 0 (alone) uses 2 steps at level 0, then is at level 1 when id 1
    arrives at t=2.5; id 1 (level 0) runs from t=3."""
    state = run_policy("mlfq", create_state([0.0, 2.5], [10, 1]), base_quantum_s=2.0)
    assert state.first_token_s[1] == 4.0
    assert state.finish_s.tolist() == [11.0, 4.0]


def test_ltr_guard_fires_at_200_idle_steps():
    """Oracle scores: id 1 (300 tokens) outranks id 0 (400). id 0 idles; after 200 steps of id 1 it gets
    top priority for 10 steps: its first token ends step 201."""
    guarded = run_policy("ltr", create_state([0.0, 0.0], [400, 300]), predictor="oracle")
    assert guarded.first_token_s[0] == 201.0
    assert guarded.preemptions[1] >= 1
    off = run_policy("ltr", create_state([0.0, 0.0], [400, 300]), predictor="oracle", starvation_steps=0)
    assert off.first_token_s[0] == 301.0
    almost = run_policy("ltr", create_state([0.0, 0.0], [400, 300]), predictor="oracle", starvation_steps=300)
    assert almost.first_token_s[0] == 301.0


def test_srpt_sd_uses_the_true_future_acceptance():
    """Two requests of equal length, different α: the oracle serves the one that will finish sooner."""
    state = create_state([0.0, 0.0], [200, 200], k=4, cost=fixed_profile(0.01))
    acc = FixedAcceptance(np.array([0.2, 0.9]), state.request_id, 4, rng.stream_key(0, 0, 1))
    state.acceptance = acc
    simulate(state, make_policy("srpt-sd"), acc)
    assert state.finish_s[1] < state.finish_s[0]


@pytest.mark.parametrize(("name", "params", "key"), [
    ("mlfq", {"base_quantum_s": -0.1}, "scheduler.base_quantum_s"),
    ("laps-sd", {"window": -1}, "scheduler.window"),
    ("laps-sd", {"perceptible_policy": "lifo"}, "scheduler.perceptible_policy"),
    ("laps-sd", {"thresholds": [0.5, 0.2]}, "scheduler.thresholds"),
    ("laps-sd", {"thresholds": [0.0, 1.0]}, "scheduler.thresholds"),
    ("laps-sd", {"base_quantum": -0.1}, "scheduler.base_quantum"),
    ("ssjf", {"predictor_cuts": [141, 42]}, "scheduler.predictor_cuts"),
    ("ssjf", {"predictor": "crystal-ball"}, "scheduler.predictor"),
    ("ltr", {"predictor_tau": 2.0}, "scheduler.predictor_tau"),
    ("skip-join-mlfq", {"levels": 0}, "scheduler.levels"),
])
def test_bad_parameters_name_the_key(name, params, key):
    with pytest.raises(LapsbenchError) as err:
        make_policy(name, params)
    assert key in str(err.value) and "expected" in str(err.value)


# ---------------------------------------------------------------------------------------------- Cobham

STEP_S = 0.01
CUTS = (42, 141, 294, 503)


def size_pmf():
    tokens, pmf = oracles.geometric_pmf(150)
    return tokens, pmf


def cobham_ssjf(rho: float) -> float:
    """E[T] of non-preemptive priority by *predicted* bucket (FCFS within a class): classes are the
    predicted buckets; their rates and size moments come from the true sizes routed by the confusion
    matrix (baselines.md §5.2)."""
    tokens, pmf = size_pmf()
    x = tokens * STEP_S
    lam = rho / float(np.sum(x * pmf))
    route = confusion_matrix(len(CUTS) + 1, 0.60, 0.93)[bucket_of(tokens, CUTS)]  # P(class j | size)
    w = pmf[:, None] * route                              # joint P(size, class)
    lam_j = lam * w.sum(axis=0)
    es_j = (w * x[:, None]).sum(axis=0) / w.sum(axis=0)
    rho_j = lam_j * es_j
    sigma = np.cumsum(rho_j)
    sigma_prev = np.concatenate(([0.0], sigma[:-1]))
    w0 = lam * float(np.sum(pmf * x * x)) / 2
    t_j = es_j + w0 / ((1 - sigma_prev) * (1 - sigma))
    return float(np.sum(lam_j / lam * t_j))


def ssjf_replications(rho: float, n_jobs: int, reps: int) -> np.ndarray:
    tokens, pmf = size_pmf()
    lam = rho / (float(np.sum(tokens * pmf)) * STEP_S)
    means = []
    for r in range(reps):
        g = np.random.default_rng([77, r])
        sizes = g.geometric(1 / 150, n_jobs)
        state = create_state(np.cumsum(g.exponential(1 / lam, n_jobs)), sizes, cost=fixed_profile(STEP_S))
        state.seed, state.replication = 77, r
        simulate(state, make_policy("ssjf", {"starvation_guard": False, "predictor_cuts": list(CUTS)}),
                 create_acceptance(state))
        means.append((state.finish_s - state.arrival_s)[n_jobs // 10:].mean())
    return np.array(means)


def test_ssjf_matches_cobham_priority_formula():
    means = ssjf_replications(0.7, 6000, 8)
    half = t95(7) * means.std(ddof=1) / np.sqrt(8)
    expected = cobham_ssjf(0.7)
    assert means.mean() - half <= expected <= means.mean() + half, (means.mean(), half, expected)
    # power: the FCFS (P-K) value is far outside the interval
    tokens, pmf = size_pmf()
    x = tokens * STEP_S
    fcfs = oracles.fcfs(x, pmf, 0.7 / float(np.sum(x * pmf)))
    assert abs(fcfs - means.mean()) > 3 * half


@pytest.mark.slow
def test_ssjf_matches_cobham_priority_formula_long():
    means = ssjf_replications(0.7, 20000, 20)
    half = t95(19) * means.std(ddof=1) / np.sqrt(20)
    assert means.mean() - half <= cobham_ssjf(0.7) <= means.mean() + half
