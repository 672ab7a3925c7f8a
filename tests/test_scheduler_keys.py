"""Every built-in scheduler's compiled key (and observe / prerank) on request states set by hand: the numbers
the engines rank by, checked one by one (the whole-run semantics: test_paper_policies.py,
test_queueing_oracles.py, test_policy_conformance.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lapsbench.models.cost import fixed_profile
from lapsbench.schedulers import make_policy
from lapsbench.schedulers.stepwise import Bound

from conftest import create_acceptance, create_state, table_for

ARRIVAL, OUTPUT, PROMPT = [0.0, 0.5, 1.0], [40, 10, 25], [100, 200, 300]


def case(name: str, k: int = 4, **params):
    """Three requests; 0 has taken 5 steps (12 tokens, 4 decode steps, 16 drafts), 1 one (its prefill)."""
    state = create_state(ARRIVAL, OUTPUT, PROMPT, k=k, cost=fixed_profile(0.01, 0.002, 1e-4))
    state.acceptance = create_acceptance(state, 0.6)
    b = Bound(make_policy(name, params), state)
    state.steps[:] = [5, 1, 0]
    state.generated[:] = [12, 1, 0]
    state.decode_steps[:] = [4, 0, 0]
    state.drafted[:] = k * state.decode_steps
    state.attained_s[:] = [0.3, 0.05, 0.0]
    state.last_service_s[:] = [2.0, 1.5, 1.0]
    return state, b


def keys(b, idx=(0, 1, 2)):
    return [tuple(row) for row in b.keys(np.array(idx))]


def test_size_and_order_keys():
    assert keys(case("fcfs")[1]) == [(0.0, 0, 0), (0.5, 0, 0), (1.0, 0, 0)]
    assert keys(case("sjf")[1]) == [(40.0, 0, 0), (10.0, 0, 0), (25.0, 0, 0)]
    assert keys(case("srpt")[1]) == [(28.0, 0, 0), (9.0, 0, 0), (25.0, 0, 0)]
    assert keys(case("rr")[1]) == [(2.0, 0, 0), (1.5, 0, 0), (1.0, 0, 0)]


@pytest.mark.parametrize(("unit", "first"), [("steps", [5.0, 1.0, 0.0]), ("tokens", [12.0, 1.0, 0.0]),
                                             ("seconds", [0.3, 0.05, 0.0])])
def test_las_counts_service_in_its_unit(unit, first):
    assert [k[0] for k in keys(case("las", unit=unit)[1])] == first


def test_srpt_sd_is_the_true_remaining_time_of_the_step_table():
    state, b = case("srpt-sd")
    table = table_for(state, state.acceptance)
    total = table.service_ns()
    done0 = table.cum_ns[table.offset[0] + 4]          # 0's first five steps
    assert [k[0] for k in keys(b)] == [float(total[0] - done0), float(total[1] - table.cum_ns[table.offset[1]]),
                                       float(total[2])]


def test_ssjf_guard_orders_by_arrival_once_the_oldest_waiting_request_starves():
    state, b = case("ssjf", predictor="oracle", starvation_s=0.7, starvation_factor=0.0)
    assert [k[0] for k in b.keys(np.array([1, 2]), now=1.5, rank=True)] == [10.0, 25.0]   # 2 waited 0.5 s
    assert [k[0] for k in b.keys(np.array([1, 2]), now=1.8, rank=True)] == [0.5, 1.0]    # 0.8 s > 0.7: arrival


def test_mlfq_front_and_demotion_after_the_quantum():
    state, b = case("mlfq", base_quantum_s=0.2)
    assert keys(b) == [(0.0, 1.0, 0.0)] * 3                 # level 0, arrivals FCFS (index breaks ties)
    b.observe(np.array([0]), 2.0)                          # 0 has attained 0.3 s >= 0.2: level 1, entry 1
    assert keys(b)[0] == (1.0, 0.0, -1.0)
    assert b.P.entry_attained[0] == 0.3 and b.P.entry_s[0] == 2.0


def test_skip_join_joins_the_queue_covering_the_prefill():
    state, b = case("skip-join-mlfq", base_quantum_s=0.02)  # quanta 0.02, 0.04, 0.08 ...; prefill 0.01 + 1e-4·p
    assert [k[0] for k in keys(b)] == [0.0, 1.0, 1.0]        # prefills 0.02, 0.03, 0.04 s
    assert [k[1] for k in keys(b)] == ARRIVAL


def test_ltr_boosts_a_starving_request_ahead_of_every_score():
    state, b = case("ltr", predictor="oracle", starvation_steps=2, boost_steps=1)
    assert keys(b) == [(1.0, 0.0, 40.0), (1.0, 0.0, 10.0), (1.0, 0.0, 25.0)]
    b.keys(np.array([0, 1, 2]), rank=True)                 # everyone admitted at iteration 0
    for _ in range(2):
        b.observe(np.array([1]), 0.0)                      # two iterations serve only 1
    got = b.keys(np.array([0, 1, 2]), rank=True)
    assert [tuple(r) for r in got] == [(0.0, 1.0, 40.0), (1.0, 0.0, 10.0), (0.0, 2.0, 25.0)]


def test_laps_sd_reads_acceptance_from_the_drafted_tokens():
    """Perceptible request 0: 12 tokens after 4 decode steps = 7 accepted drafts. With the 16 drafts of k = 4
    A = 7/16 and the mean K run 4; with 8 drafted (as an adaptive K could give), A = 7/8 and mean K 2 — the
    estimate T = L·factor / (K̄·A + 1) follows `drafted`."""
    state, b = case("laps-sd", predictor="oracle", unit="steps", thresholds=[1000.0])
    assert keys(b)[0] == (0.0, 1.0, 0.0)                   # not perceptible: (level, 1, arrival)
    b.P.perceptible[0] = True
    factor = b.P.factor[100 + 12]                          # k·T_draft + T_verify at its context
    for drafted, a in ((16, 7 / 16), (8, 7 / 8)):
        state.drafted[0] = drafted
        assert keys(b)[0] == pytest.approx((0.0, 0.0, 28 * factor / (drafted / 4 * a + 1)))


def test_laps_sd_stability_rule_compares_acceptance_over_the_window():
    """window 2, min_steps 3, tolerance 0: acceptance 1/4 after every step, so the rule fires at its first
    check, decode step 3 (Â_3 = Â_1)."""
    state, b = case("laps-sd", predictor="oracle", window=2, min_steps=3, tolerance=0.0)
    for s, g in ((1, 3), (2, 5), (3, 7), (4, 9), (5, 11)):
        state.decode_steps[0], state.generated[0], state.drafted[0] = s, g, 4 * s
        b.observe(np.array([0]), 0.0)
        assert bool(b.P.perceptible[0]) == (s >= 3)
    assert b.P.perceptible_at[0] == 3
