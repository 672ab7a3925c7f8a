"""The batched engine: run() — the compiled loop, or the Python engine with event skipping where it falls
back — equals stepping one at a time in Python (with the KV-cache invariant checked after every step), modes
behave as defined, throughput scales with the batch, preemption is charged."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from lapsbench.batching import BatchConfig, BatchedEngine, _roundup
from lapsbench.costmodel import CostModel, PhaseModel, fixed_profile
from lapsbench.engine import table_for
from lapsbench.errors import LapsbenchError
from lapsbench.policies import make_policy, registry
from lapsbench.policies.fcfs import FCFS

from conftest import create_acceptance, create_state
from test_policy_conformance import IDS as VARIANT_IDS
from test_policy_conformance import VARIANTS
from test_policy_conformance import random_case as policy_case

POLICIES = sorted(registry())
FIELDS = ("generated", "steps", "decode_steps", "attained_s", "first_token_s", "finish_s", "preemptions",
          "preempted_s")


def linear_cost(kv_capacity: int = 0) -> CostModel:
    """A small profile with batch-dependent verify time and a compute knee at 64 tokens per forward."""
    return CostModel(
        name="test-knee",
        target=PhaseModel(coef={"const": 5.0, "context": 1e-4}, coef_compute={"const": 1.0, "tokens": 0.0625},
                          form="max"),
        target_prefill=PhaseModel(coef={"const": 2.0, "tokens": 0.02}),
        draft=PhaseModel(coef={"const": 0.3, "tokens": 0.001}),
        kv_capacity_tokens=kv_capacity, kv_bytes_per_token=131072, host_link_gb_s=20.0)


def random_case(seed: int, n: int = 30):
    g = np.random.default_rng(seed)
    arrivals = np.maximum.accumulate(np.cumsum(g.exponential(0.01, n)) * (g.random(n) > 0.3))
    return dict(arrival_s=arrivals, output_tokens=g.integers(1, 60, n), prompt_tokens=g.integers(1, 200, n),
                k=int(g.integers(0, 4)), request_id=g.permutation(5 * n)[:n])


def run(case: dict, policy: str, config: BatchConfig, cost: CostModel, reference: bool, alpha: float = 0.6):
    state = create_state(**case, cost=cost)
    state.acceptance = create_acceptance(state, alpha, 3)  # oracle policies read the true future from it
    engine = BatchedEngine(state, make_policy(policy), state.acceptance, config, check_invariants=reference)
    engine.run(max_rounds=1 if reference else None)
    return state, engine


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("mode", ["static", "dynamic", "continuous"])
@pytest.mark.parametrize("seed", range(3))
def test_fast_equals_stepwise_reference(policy: str, mode: str, seed: int):
    case = random_case(seed)
    worst = int((case["prompt_tokens"] + case["output_tokens"]).max()) + 16 + 5
    capacity = [np.inf, worst * 3, worst + 32][seed]  # unlimited, tight, very tight (forces preemption)
    config = BatchConfig(mode=mode, max_batch=[4, 8, 16][seed], max_batch_tokens=[64, 128, 512][seed],
                         kv_capacity_tokens=capacity, preemption=["swap", "recompute", "swap"][seed])
    cost = linear_cost()
    fast, fast_engine = run(case, policy, config, cost, reference=False)
    slow, engine = run(case, policy, config, cost, reference=True)
    assert fast_engine.compiled_steps, "run() fell back to the Python loop: the comparison would be vacuous"
    assert engine.compiled_steps is None
    assert fast.done.all() and np.array_equal(fast.generated, fast.output_tokens)
    for field in FIELDS:
        assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
    assert engine.max_used <= capacity
    assert fast_engine.max_used == engine.max_used
    np.testing.assert_equal(fast_engine.stats(), engine.stats())  # exact (NaN where capacity is unlimited)


def test_memory_pressure_preempts_and_charges_swap_time():
    """Under a tight KV capacity some requests are swapped out; every swap is charged out and back in."""
    case = random_case(7, n=40)
    case["arrival_s"] = np.zeros(40)
    worst = int((case["prompt_tokens"] + case["output_tokens"]).max()) + 16 + 5
    cfg = BatchConfig(mode="continuous", max_batch=32, max_batch_tokens=4096, kv_capacity_tokens=worst + 64)
    state, engine = run(case, "las", cfg, linear_cost(), reference=True)
    assert state.preemptions.sum() > 0 and state.preempted_s.sum() > 0
    assert engine.max_used <= worst + 64


def test_swap_and_recompute_timeline_by_hand():
    """Two requests at t = 0, fixed profile (step 1 s, prefill 1 s + 0.1 s/token), k = 0, KV capacity 48
    slots (blocks of 16), 8 KiB per token over a 8192-byte/s link (1 s per token to swap).

    A: prompt 20, output 3; B arrives at t = 0.5, prompt 10, output 2; policy srpt (B has fewer tokens).
    t 0–3   A prefills (1 + 0.1·20 = 3 s), emits token 1; A holds roundup(20+1+1) = 32 slots.
    at 3    B (2 left) outranks A (2 left? A has 2 left too; tie → arrival: A first). So instead we give B
            output 1 so it outranks A: B needs roundup(10+0+1) = 16 slots → 32 + 16 = 48 fits: no eviction.
    This case has no pressure; the pressure case below uses capacity 32 so B must evict A:
    swap: A's 32 slots out = 32 s stall; B prefills (1 + 1 = 2 s) and finishes; A swaps back in (32 s) and
    decodes its remaining 2 tokens (1 s each).
    """
    cost = dataclasses.replace(fixed_profile(1.0, prefill_s_per_token=0.1), kv_bytes_per_token=8192.0,
                               host_link_gb_s=8192.0 / 1e9)
    case = dict(arrival_s=[0.0, 0.5], prompt_tokens=[20, 10], output_tokens=[3, 1], k=0)
    cfg = BatchConfig(mode="continuous", max_batch=2, max_batch_tokens=64, kv_capacity_tokens=32,
                      preemption="swap")
    state, _ = run(case, "srpt", cfg, cost, reference=True)
    # 0–3 A prefill; at 3: B (1 left) ranks first; needs 16, A holds 32, capacity 32 → evict A: 32 s stall,
    # step = B's prefill 1 + 0.1·10 = 2 s → B finishes at 3 + 32 + 2 = 37. Then A swaps in (32 s) and decodes
    # one step (1 s) → 70, and another → 71.
    assert state.finish_s.tolist() == pytest.approx([71.0, 37.0])
    assert state.preemptions.tolist() == [1, 0]
    assert state.preempted_s.tolist() == pytest.approx([64.0, 0.0])

    recompute = dataclasses.replace(cfg, preemption="recompute")
    state, _ = run(case, "srpt", recompute, cost, reference=True)
    # at 3 A is dropped (no stall); B prefills 3–5 and finishes. A re-prefills prompt + 1 generated token
    # (1 + 0.1·21 = 3.1 s) → 8.1, emitting its 2nd token; one decode step → 9.1 (3rd token, done).
    assert state.finish_s.tolist() == pytest.approx([9.1, 5.0])
    assert state.preemptions.tolist() == [1, 0]


def test_static_batch_completes_together_and_dynamic_rebatches():
    """Static: all members complete at the batch end. Dynamic: the batch dissolves at the first completion."""
    case = dict(arrival_s=[0.0, 0.0, 0.0], prompt_tokens=[1, 1, 1], output_tokens=[2, 5, 3], k=0)
    cost = fixed_profile(1.0)
    static, _ = run(case, "fcfs", BatchConfig(mode="static", max_batch=2), cost, reference=False)
    # batch {0, 1} runs 5 steps (0–5), then {2} runs 3 steps (5–8)
    assert static.finish_s.tolist() == [5.0, 5.0, 8.0]
    dynamic, _ = run(case, "sjf", BatchConfig(mode="dynamic", max_batch=2), cost, reference=False)
    # SJF: {0 (2 tokens), 2 (3)}: both prefill 0–1 (1 token each), 0 finishes at 2; re-form {2, 1}: 2 decodes
    # its last token while 1 prefills (one fused step, 2–3); then {1} alone decodes 4 tokens: done at 7
    assert dynamic.finish_s.tolist() == [2.0, 7.0, 3.0]


def test_throughput_rises_with_batch_and_flattens_at_the_compute_knee():
    """Saturating load (everyone at t = 0), k = 0: verify time = max(5 ms, 1 ms + 0.0625 ms/token), a knee
    at 64 tokens per forward. Throughput grows with max_batch up to ~64 and then stays flat."""
    n = 600
    case = dict(arrival_s=np.zeros(n), prompt_tokens=np.full(n, 8), output_tokens=np.full(n, 64), k=0)
    throughput = {}
    for batch in (1, 4, 16, 64, 128, 256):
        cfg = BatchConfig(mode="continuous", max_batch=batch, max_batch_tokens=8192)
        state, _ = run(case, "fcfs", cfg, linear_cost(), reference=False)
        throughput[batch] = n * 64 / state.finish_s.max()
    assert throughput[1] < throughput[4] < throughput[16] < throughput[64]
    assert throughput[64] > 8 * throughput[1]
    assert throughput[256] == pytest.approx(throughput[128], rel=0.1)
    assert throughput[256] < 1.3 * throughput[64]


def test_capacity_smaller_than_a_request_is_refused():
    case = dict(arrival_s=[0.0, 1.0], prompt_tokens=[10, 500], output_tokens=[5, 100], k=2, request_id=[7, 8])
    with pytest.raises(LapsbenchError, match="request 8"):
        run(case, "fcfs", BatchConfig(mode="continuous", kv_capacity_tokens=256), linear_cost(), reference=False)


class PositionDependent:
    """A position-dependent acceptance stub: the step table cannot pre-draw it, so run() must fall back to
    the Python loop (one extra token when the position is even, capped at k + 1)."""

    position_dependent = True

    def __init__(self, inner) -> None:
        self.inner = inner

    def emitted(self, req, step, position):
        base = self.inner.emitted(req, step, position)
        return np.minimum(base + (np.asarray(position) % 2 == 0), self.inner.k + 1)


class NoKernelFCFS(FCFS):
    """FCFS without a compiled kernel: run() must fall back to the Python loop."""

    def kernel(self, state):
        return None


@pytest.mark.parametrize("mode", ["static", "dynamic", "continuous"])
@pytest.mark.parametrize("fallback", ["acceptance", "policy"])
def test_python_fallback_equals_stepwise_reference(mode: str, fallback: str):
    case = random_case(5)
    worst = int((case["prompt_tokens"] + case["output_tokens"]).max()) + 16 + 5
    config = BatchConfig(mode=mode, max_batch=8, max_batch_tokens=128, kv_capacity_tokens=worst * 2,
                         preemption="recompute")
    runs = []
    for reference in (False, True):
        state = create_state(**case, cost=linear_cost())
        acceptance = create_acceptance(state, 0.6, 3)
        state.acceptance = acceptance
        if fallback == "acceptance":
            acceptance, policy = PositionDependent(acceptance), make_policy("las")
        else:
            policy = NoKernelFCFS()
        engine = BatchedEngine(state, policy, acceptance, config, check_invariants=reference)
        engine.run(max_rounds=1 if reference else None)
        assert engine.compiled_steps is None
        runs.append((state, engine))
    (fast, fast_engine), (slow, engine) = runs
    assert fast.done.all() and np.array_equal(fast.generated, fast.output_tokens)
    for field in FIELDS:
        assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
    assert fast_engine.max_used == engine.max_used


@pytest.mark.parametrize("policy", POLICIES)
def test_compiled_loop_runs_with_a_shared_table_and_reports_progress(policy: str):
    """A prebuilt step table (as the runner shares one per replication) gives the results of the table the
    loop builds itself; progress counts rise to n (tests/test_progress.py: the timing); recompute never runs a request
    past its table's steps (a re-prefill's extra token only shortens it)."""
    case = random_case(11, n=60)
    worst = int((case["prompt_tokens"] + case["output_tokens"]).max()) + 16 + 5
    # prompts are < 200 tokens, so a (re-)prefill completes in one step: with smaller chunks, preemptive
    # policies under recompute can evict each other's partial prefills forever
    config = BatchConfig(mode="continuous", max_batch=8, max_batch_tokens=256, kv_capacity_tokens=worst + 48,
                         preemption="recompute")
    results = []
    for variant in ("own table", "shared table", "reference"):
        state = create_state(**case, cost=linear_cost())
        state.acceptance = create_acceptance(state, 0.6, 3)
        table = table_for(state, state.acceptance)
        calls: list[int] = []
        engine = BatchedEngine(state, make_policy(policy), state.acceptance, config,
                               table=table if variant == "shared table" else None)
        engine.run(calls.append, max_rounds=1 if variant == "reference" else None)
        assert (engine.compiled_steps is None) == (variant == "reference")
        assert calls == sorted(set(calls)) and calls[-1] == state.n
        assert np.all(state.decode_steps + 1 <= table.n_steps)
        results.append((state, engine, calls))
    (own, own_engine, _), (shared, shared_engine, _), (slow, engine, _) = results
    for field in FIELDS:
        assert np.array_equal(getattr(own, field), getattr(slow, field)), field
        assert np.array_equal(getattr(shared, field), getattr(slow, field)), field
    np.testing.assert_equal(own_engine.stats(), engine.stats())
    np.testing.assert_equal(shared_engine.stats(), engine.stats())


@pytest.mark.parametrize("policy", POLICIES)
def test_compiled_loop_with_large_batches(policy: str):
    """Batches of up to 64 (served requests are sorted for observe with a merge sort past 32), both
    preemption kinds, under memory pressure."""
    g = np.random.default_rng(21)
    n = 160
    case = dict(arrival_s=np.sort(g.uniform(0, 0.05, n)), output_tokens=g.integers(1, 80, n),
                prompt_tokens=g.integers(1, 120, n), k=3, request_id=g.permutation(4 * n)[:n])
    for preemption in ("swap", "recompute"):
        config = BatchConfig(mode="continuous", max_batch=64, max_batch_tokens=4096, kv_capacity_tokens=6000,
                             preemption=preemption)
        fast, fast_engine = run(case, policy, config, linear_cost(), reference=False)
        slow, engine = run(case, policy, config, linear_cost(), reference=True)
        assert fast_engine.compiled_steps and fast_engine.max_batch_seen > 32
        for field in FIELDS:
            assert np.array_equal(getattr(fast, field), getattr(slow, field)), (preemption, field)
        np.testing.assert_equal(fast_engine.stats(), engine.stats())


@pytest.mark.parametrize("mode", ["static", "dynamic", "continuous"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=VARIANT_IDS)
def test_policy_variants_compiled_equal_stepwise(name: str, params: dict, seed: int, mode: str):
    """The policy variants of tests/test_policy_conformance.py (starvation guards, promotions, boosts, other
    units and placements: keys that change for everyone at once) batched: the compiled loop equals the
    Python reference, on fixed and fitted profiles and fixed / beta / empirical acceptance."""
    runs = []
    for reference in (False, True):
        state, acc = policy_case(seed)
        worst = int(_roundup(state.prompt_tokens + state.output_tokens + state.k + 1, 8).max())
        # prefills fit one step's budget (prompt + output < 512): see test_compiled_loop_runs_with_a_shared_table
        config = BatchConfig(mode=mode, max_batch=[3, 6][seed % 2], max_batch_tokens=512,
                             kv_capacity_tokens=np.inf if seed == 0 else worst + 24,
                             preemption=["swap", "recompute"][seed // 2], block_size=8)
        engine = BatchedEngine(state, make_policy(name, copy.deepcopy(params)), acc, config,
                               check_invariants=reference)
        engine.run(max_rounds=1 if reference else None)
        assert (engine.compiled_steps is None) == reference
        runs.append((state, engine))
    (fast, fast_engine), (slow, engine) = runs
    assert fast.done.all() and np.array_equal(fast.generated, fast.output_tokens)
    for field in FIELDS:
        assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
    np.testing.assert_equal(fast_engine.stats(), engine.stats())


def livelock_case(policy: str, preemption: str = "recompute"):
    """Two 200-token prompts prefilled in 64-token chunks with room for one and a bit: a policy that ranks
    the less-served request first (las, rr) evicts the other mid-prefill every step."""
    state = create_state(arrival_s=[0.0, 0.0], output_tokens=[5, 5], prompt_tokens=[200, 200], cost=linear_cost())
    state.acceptance = create_acceptance(state, 0.5, 3)
    config = BatchConfig(mode="continuous", max_batch=4, max_batch_tokens=64, kv_capacity_tokens=256.0,
                         preemption=preemption, block_size=16)
    return state, BatchedEngine(state, make_policy(policy), state.acceptance, config)


@pytest.mark.parametrize("policy", ["las", "rr"])
@pytest.mark.parametrize("reference", [False, True])
def test_recompute_livelock_is_reported_not_simulated_forever(policy: str, reference: bool):
    state, engine = livelock_case(policy)
    with pytest.raises(LapsbenchError, match=rf"scheduler {policy}: livelock — 3,328 prefill tokens .* the 2 "
                                             r"requests present.*recompute preemption") as info:
        engine.run(max_rounds=1 if reference else None)
    assert "\n" not in str(info.value)
    assert not state.done.any() and state.preemptions.sum() > 20  # evicted over and over, nothing finished


@pytest.mark.parametrize(("policy", "preemption"), [("las", "swap"), ("rr", "swap"), ("fcfs", "recompute"),
                                                    ("srpt", "recompute")])
def test_same_pressure_without_the_livelock_completes(policy: str, preemption: str):
    """Swap keeps prefill progress; fcfs / srpt keep ranking the same request first: all finish."""
    for reference in (False, True):
        state, engine = livelock_case(policy, preemption)
        engine.run(max_rounds=1 if reference else None)
        assert state.done.all() and (engine.compiled_steps is None) == reference


def test_compiled_loop_reads_32_bit_token_tables():
    """An output of 32,767 tokens or more makes the step table's tokens int32 (else int16): the compiled
    loop, specialised per dtype, still equals the step-by-step reference."""
    case = dict(arrival_s=[0.0, 0.0, 0.1, 0.2], output_tokens=[33_000, 40, 7, 90], prompt_tokens=[50, 20, 30, 10],
                k=4, request_id=[5, 1, 9, 3])
    config = BatchConfig(mode="continuous", max_batch=2, max_batch_tokens=64)
    fast, engine = run(case, "las", config, linear_cost(), reference=False)
    slow, _ = run(case, "las", config, linear_cost(), reference=True)
    from lapsbench.steptable import _token_dtype

    assert engine.compiled_steps is not None and _token_dtype(fast.output_tokens) is np.int32
    for name in FIELDS:
        assert np.array_equal(getattr(fast, name), getattr(slow, name), equal_nan=True), name
