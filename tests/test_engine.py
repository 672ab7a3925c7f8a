"""Engine behaviour at batch size 1: hand-worked timelines, invariants, SD tokens per step, and
agreement with the step-by-step reference engine."""

from __future__ import annotations

import numpy as np
import pytest

from lapsbench.models.acceptance import mean_tokens_per_step
from lapsbench.models.cost import fixed_profile
from lapsbench.results.metrics import t95
from lapsbench.schedulers import make_policy, registry

from conftest import REPO, create_acceptance, create_state, run_policy, simulate
from reference_engine import reference_simulate

BASIC = ["fcfs", "sjf", "srpt", "las", "rr"]


def finish_times(state) -> list[float]:
    return [round(float(x), 9) for x in state.finish_s]


# --------------------------------------------------------------------------- hand-worked timelines
# Every step costs 1 s (fixed profile), k = 0: a request of L tokens needs L steps.
#   id  arrive  tokens
#   0   0       4
#   1   1       2
#   2   2       1
ARRIVALS, TOKENS = [0.0, 1.0, 2.0], [4, 2, 1]


def test_fcfs_timeline():
    """FCFS: 0 runs 0–4, 1 runs 4–6, 2 runs 6–7."""
    state = run_policy("fcfs", create_state(ARRIVALS, TOKENS))
    assert finish_times(state) == [4.0, 6.0, 7.0]
    assert state.preemptions.tolist() == [0, 0, 0]


def test_sjf_timeline():
    """SJF is non-preemptive: 0 runs 0–4; at 4 the shortest waiting (2, one token) runs 4–5, then 1 5–7."""
    state = run_policy("sjf", create_state(ARRIVALS, TOKENS))
    assert finish_times(state) == [4.0, 7.0, 5.0]


def test_srpt_timeline():
    """SRPT preempts at step boundaries: 0 runs 0–1 (3 left); 1 (2 left) runs 1–2 (1 left); at 2, request 2
    (1 left) ties with 1 (1 left): arrival order, so 1 finishes at 3, then 2 at 4, then 0 at 7."""
    state = run_policy("srpt", create_state(ARRIVALS, TOKENS))
    assert finish_times(state) == [7.0, 3.0, 4.0]
    assert state.preemptions.tolist() == [1, 0, 0]


def test_las_timeline_and_preemption_of_a_long_request():
    """LAS: 0 runs 0–1 (1 step attained); 1 arrives at 1 with 0 attained and preempts; 1 runs 1–2; at 2
    request 2 (0 attained) runs 2–3 and finishes; then 0 and 1 are tied at 1 step and alternate by arrival:
    0 3–4, 1 4–5 (done), 0 5–7."""
    state = run_policy("las", create_state(ARRIVALS, TOKENS))
    assert finish_times(state) == [7.0, 5.0, 3.0]
    assert state.preemptions[0] >= 1


def test_rr_timeline():
    """RR, one step each, in order of last service (or arrival); equal keys go to the earlier arrival.
    0 runs 0–1. At 1, 1 arrives (key 1) and 0 was last served at 1 (key 1): tie → 0 runs 1–2. At 2: 1 (key 1)
    runs 2–3; then 0 (key 2) and 2 (arrived at 2, key 2) tie → 0 runs 3–4, 2 runs 4–5 (done); 1 (key 3)
    runs 5–6 (done); 0 runs 6–7 (done)."""
    state = run_policy("rr", create_state(ARRIVALS, TOKENS))
    assert finish_times(state) == [7.0, 6.0, 5.0]


def test_ties_break_by_arrival_then_id():
    """Three identical requests arriving together run in request order (FCFS and SJF alike)."""
    for name in ("fcfs", "sjf", "srpt"):
        state = run_policy(name, create_state([0.0, 0.0, 0.0], [2, 2, 2], request_id=[5, 6, 7]))
        assert finish_times(state) == [2.0, 4.0, 6.0], name


def test_prefill_step_emits_first_token_and_costs_prompt_time():
    """The first step of a request is its prefill: step_s + prefill_s_per_token·prompt, emitting one token."""
    cost = fixed_profile(step_s=0.5, prefill_s_per_token=0.01)
    state = run_policy("fcfs", create_state([0.0], [3], prompt_tokens=[100], cost=cost))
    assert state.first_token_s[0] == pytest.approx(1.5)
    assert state.finish_s[0] == pytest.approx(2.5)


# --------------------------------------------------------------------------- invariants

def random_workload(seed: int, n: int = 60, k: int = 3):
    g = np.random.default_rng(seed)
    arrivals = np.cumsum(g.exponential(0.4, n)) * (g.random(n) > 0.2)  # some simultaneous bursts
    arrivals = np.maximum.accumulate(arrivals)
    return dict(arrival_s=arrivals, output_tokens=g.integers(1, 40, n), prompt_tokens=g.integers(1, 300, n),
                k=k, cost=fixed_profile(0.02, draft_step_s=0.003, prefill_s_per_token=1e-4),
                request_id=g.permutation(10 * n)[:n])


@pytest.mark.parametrize("name", BASIC)
@pytest.mark.parametrize("seed", range(4))
def test_invariants(name: str, seed: int):
    state = run_policy(name, create_state(**random_workload(seed)), alpha=0.6, seed=seed)
    assert state.done.all()
    assert np.array_equal(state.generated, state.output_tokens)
    assert np.all(state.finish_s >= state.arrival_s + state.attained_s - 1e-9)
    assert np.all(state.first_token_s <= state.finish_s)
    assert np.all(state.first_token_s > state.arrival_s)


def test_work_conserving_policies_share_the_makespan():
    """Every work-conserving single-server policy empties the system at the same instant (same work)."""
    ends = {name: run_policy(name, create_state(**random_workload(11)), alpha=0.6).finish_s.max()
            for name in BASIC}
    assert len({round(v, 9) for v in ends.values()}) == 1, ends


@pytest.mark.parametrize("name", BASIC)
def test_same_seed_same_result_and_common_random_numbers(name: str):
    a = run_policy(name, create_state(**random_workload(3)), alpha=0.7, seed=9)
    b = run_policy(name, create_state(**random_workload(3)), alpha=0.7, seed=9)
    assert np.array_equal(a.finish_s, b.finish_s) and np.array_equal(a.steps, b.steps)


def test_common_random_numbers_across_schedulers():
    """A request emits the same token sequence under any scheduler: with k > 0 and an unbounded output,
    its steps-to-finish are identical under FCFS and LAS."""
    w = random_workload(5)
    steps = {name: run_policy(name, create_state(**w), alpha=0.7, seed=2).steps for name in BASIC}
    for name in BASIC:
        assert np.array_equal(steps[name], steps["fcfs"]), name


# --------------------------------------------------------------------------- reference engine

@pytest.mark.parametrize("name", BASIC)
@pytest.mark.parametrize("seed", range(6))
def test_fast_engine_equals_reference(name: str, seed: int):
    w = random_workload(100 + seed, n=40, k=seed % 4)
    fast = create_state(**w)
    ref = create_state(**w)
    simulate(fast, make_policy(name), create_acceptance(fast, 0.65, seed))
    reference_simulate(ref, make_policy(name), create_acceptance(ref, 0.65, seed))
    for field in ("generated", "steps", "attained_s", "first_token_s", "finish_s", "preemptions"):
        assert np.array_equal(getattr(fast, field), getattr(ref, field)), field


def test_registry_lists_basic_policies():
    assert set(BASIC) <= set(registry())


# --------------------------------------------------------------------------- speculative decoding

@pytest.mark.parametrize(("alpha", "k"), [(0.5, 1), (0.7, 4), (0.9, 6), (0.0, 3)])
def test_mean_tokens_per_step_matches_closed_form(alpha: float, k: int):
    """Fixed α, k drafts: E[tokens per SD step] = (1 − α^(k+1)) / (1 − α). Long outputs so the final
    (capped) step is negligible; the CI is over 40 independent requests."""
    n, length = 40, 3000
    state = run_policy("fcfs", create_state(np.zeros(n), np.full(n, length), k=k), alpha=alpha, seed=1)
    per_request = (length - 1) / (state.steps - 1)  # tokens after the prefill step / SD steps
    half = t95(n - 1) * per_request.std(ddof=1) / np.sqrt(n)
    expected = mean_tokens_per_step(alpha, k) if alpha > 0 else 1.0
    assert abs(per_request.mean() - expected) <= max(half, 1e-12) + 2 * k / length


def test_k_zero_is_plain_decoding_without_draft_cost():
    cost = fixed_profile(step_s=1.0, draft_step_s=5.0)
    state = run_policy("fcfs", create_state([0.0], [10], k=0, cost=cost), alpha=0.9)
    assert state.steps[0] == 10 and state.finish_s[0] == pytest.approx(10.0)


def test_each_engine_binds_the_scheduler_by_one_line():
    """A scheduler's compiled functions are reached only through the module global `dispatch`, bound by exactly one
    line in each engine module, and every function calling `dispatch.*` lives in that module (a user scheduler
    gets its own engine from a copy of the module's source with that line replaced)."""
    line = "from lapsbench.schedulers import dispatch"
    callers = {}
    for path in sorted((REPO / "lapsbench").rglob("*.py")):
        if path.parent.name == "schedulers" or path.parts[-3:-1] == ("lapsbench", "policies"):
            continue
        text = path.read_text()
        if "dispatch." in text or line in text:
            callers[path.relative_to(REPO).as_posix()] = text.splitlines().count(line)
    assert callers == {"lapsbench/engine/batch1.py": 1, "lapsbench/engine/batched.py": 1}


def test_drafted_counts_k_per_decode_step():
    state = create_state(np.arange(6.0), [5, 1, 9, 3, 12, 2], k=3, cost=fixed_profile(0.5, 0.01))
    run_policy("las", state, alpha=0.6)
    assert state.done.all() and state.decode_steps.sum() > 0
    assert np.array_equal(state.drafted, 3 * state.decode_steps)
