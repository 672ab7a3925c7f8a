"""The batched engine (lapsbench/engine/batched.py) equals the step-by-step Python reference
(tests/reference_batched.py, the KV-cache invariant checked after every step in both), modes behave as defined,
throughput scales with the batch, preemption is charged."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import polars as pl
import pytest
from reference_batched import ReferenceBatched, _roundup

from lapsbench.config.scenario import parse_scenario
from lapsbench.engine.context import BatchConfig
from lapsbench.errors import LapsbenchError
from lapsbench.models.cost import CostModel, PhaseModel, StepModel, fixed_profile
from lapsbench.run.runner import run_scenario
from lapsbench.schedulers import make_policy, registry

from conftest import create_acceptance, create_state, simulate, table_for, write_canonical_trace
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


def with_prefill_table(cost: CostModel) -> CostModel:
    """`cost` with a per-length prefill correction ([step] prefill_bucket_ms) over chunks of 1..208 tokens, in
    steps of 16, entries of both signs: the engine sums it per chunk, the reference from the same table."""
    table = tuple(float(x) for x in np.round(np.random.default_rng(5).uniform(-1.5, 3.0, 13), 3))
    return dataclasses.replace(cost, step=StepModel(prefill_bucket_tokens=16, prefill_bucket_ms=table))


def random_case(seed: int, n: int = 30):
    g = np.random.default_rng(seed)
    arrivals = np.maximum.accumulate(np.cumsum(g.exponential(0.01, n)) * (g.random(n) > 0.3))
    return dict(arrival_s=arrivals, output_tokens=g.integers(1, 60, n), prompt_tokens=g.integers(1, 200, n),
                k=int(g.integers(0, 4)), request_id=g.permutation(5 * n)[:n])


class Run:
    """A run of the package's engine, as far as the tests read it: its statistics."""

    def __init__(self, stats: dict) -> None:
        self._stats = stats

    def stats(self) -> dict:
        return self._stats

    @property
    def max_batch_seen(self) -> int:
        return int(self._stats["batch_size_max"])


def serve_state(state, policy, config: BatchConfig, reference: bool, progress=None):
    """Run `state` (its acceptance set) on the reference or on the package's engine (KV invariants checked)."""
    if reference:
        engine = ReferenceBatched(state, policy, state.acceptance, config)
        engine.run(progress)
        return engine
    simulate(state, policy, state.acceptance, progress, batching=config, check=True)
    return Run(state.engine_stats)


def run(case: dict, policy: str, config: BatchConfig, cost: CostModel, reference: bool, alpha: float = 0.6):
    state = create_state(**case, cost=cost)
    state.acceptance = create_acceptance(state, alpha, 3)  # oracle policies read the true future from it
    return state, serve_state(state, make_policy(policy), config, reference)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(("mode", "admission"), [("static", "greedy"), ("dynamic", "greedy"),
                                                 ("continuous", "greedy"), ("continuous", "guarded")])
@pytest.mark.parametrize("seed", range(3))
def test_fast_equals_stepwise_reference(policy: str, mode: str, admission: str, seed: int):
    """(Static and dynamic batches take no admission rule: guarded applies to continuous batching only.)"""
    case = random_case(seed)
    worst = int((case["prompt_tokens"] + case["output_tokens"]).max()) + 16 + 5
    capacity = [np.inf, worst * 3, worst + 32][seed]  # unlimited, tight, very tight (forces preemption)
    # a share of 2 lets some waiting requests displace residents under guarded admission, not all
    config = BatchConfig(mode=mode, max_batch=[4, 8, 16][seed], max_batch_tokens=[64, 128, 512][seed],
                         kv_capacity_tokens=capacity, preemption=["swap", "recompute", "swap"][seed],
                         admission=admission, admission_share=2.0)
    cost = linear_cost() if seed != 1 else with_prefill_table(linear_cost())  # recompute: chunks of every length
    fast, fast_engine = run(case, policy, config, cost, reference=False)
    slow, engine = run(case, policy, config, cost, reference=True)
    assert fast.done.all() and np.array_equal(fast.generated, fast.output_tokens)
    for field in FIELDS:
        assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
    assert engine.max_used <= capacity
    np.testing.assert_equal(fast_engine.stats(), engine.stats())  # exact (NaN where capacity is unlimited)


def test_memory_pressure_preempts_and_charges_swap_time():
    """Under a tight KV capacity some requests are swapped out; every swap is charged out and back in."""
    case = random_case(7, n=40)
    case["arrival_s"] = np.zeros(40)
    worst = int((case["prompt_tokens"] + case["output_tokens"]).max()) + 16 + 5
    cfg = BatchConfig(mode="continuous", max_batch=32, max_batch_tokens=4096, kv_capacity_tokens=worst + 64,
                      admission="greedy")
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
                      preemption="swap", admission="greedy")
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


@pytest.mark.parametrize("reference", [True, False])
def test_guarded_admission_timeline_by_hand(reference: bool):
    """The case above under guarded admission. At t = 3 B (waiting) may displace A only if the cost is at most
    admission_share × gain; the gain is the engine time A has been served since it entered memory (3 s: its
    prefill step, alone). Swap over a link of 0.01 s per token: cost 2 × 32 × 0.01 = 0.64 s.
    share 0.05 (0.15 s < 0.64): B waits; A decodes 3–4, 4–5 and finishes; B prefills 5–7.
    share 0.25 (0.75 s ≥ 0.64): A is swapped out (0.32 s), B prefills and finishes at 3 + 0.32 + 2 = 5.32, A
    swaps back in (0.32 s) and decodes 2 steps: 7.64.
    Recompute: cost = a prefill-only step of A's 21 cached tokens = 1 + 0.1·21 = 3.1 s: B waits at share 1.0
    (3 s), displaces at share 1.1 (3.3 s) — then as under greedy: B 3–5, A re-prefills 5–8.1, decodes to 9.1."""
    cost = dataclasses.replace(fixed_profile(1.0, prefill_s_per_token=0.1), kv_bytes_per_token=8192.0,
                               host_link_gb_s=8192.0 * 100 / 1e9)
    case = dict(arrival_s=[0.0, 0.5], prompt_tokens=[20, 10], output_tokens=[3, 1], k=0)
    for preemption, share, finish, preemptions in [("swap", 0.05, [5.0, 7.0], [0, 0]),
                                                   ("swap", 0.25, [7.64, 5.32], [1, 0]),
                                                   ("recompute", 1.0, [5.0, 7.0], [0, 0]),
                                                   ("recompute", 1.1, [9.1, 5.0], [1, 0])]:
        cfg = BatchConfig(mode="continuous", max_batch=2, max_batch_tokens=64, kv_capacity_tokens=32,
                          preemption=preemption, admission="guarded", admission_share=share)
        state, engine = run(case, "srpt", cfg, cost, reference=reference)
        assert state.finish_s.tolist() == pytest.approx(finish), (preemption, share)
        assert state.preemptions.tolist() == preemptions, (preemption, share)


def test_guarded_admission_keeps_residents_running_behind_a_blocked_request():
    """A blocked waiting request does not stop the walk: residents ranked below it run on the memory they
    hold, waiting requests ranked below it wait (no overtaking). Fixed profile, k = 0, blocks of 16, capacity
    64. LAS: A and B (prompt 20, output 6) prefill together at t = 0 (32 slots each); C (prompt 10) and D
    (prompt 1) arrive at 0.5 with no attained service and rank first, but memory is full and A and B (1 s of
    engine time each) are not worth a 64 s swap: C and D wait while A and B decode to the end (t = 6); then
    C and D run together."""
    cost = dataclasses.replace(fixed_profile(1.0), kv_bytes_per_token=8192.0, host_link_gb_s=8192.0 / 1e9)
    case = dict(arrival_s=[0.0, 0.0, 0.5, 0.5], prompt_tokens=[20, 20, 10, 1], output_tokens=[6, 6, 2, 2], k=0)
    for admission, finish in [("guarded", [6.0, 6.0, 8.0, 8.0]), ("greedy", None)]:
        cfg = BatchConfig(mode="continuous", max_batch=4, max_batch_tokens=64, kv_capacity_tokens=64,
                          admission=admission)
        state, engine = run(case, "las", cfg, cost, reference=True)
        stats = engine.stats()
        if finish is not None:
            assert state.finish_s.tolist() == finish
            assert state.preemptions.sum() == 0 and state.preempted_s.sum() == 0
            assert stats["evictions_mean"] == stats["displacements_mean"] == 0
        else:  # greedy: C evicts B (32 s of swap out, 32 back in)
            assert state.preemptions[1] >= 1 and state.preempted_s.sum() >= 64
            assert stats["displacements_mean"] > 0


@pytest.mark.parametrize("policy", ["fcfs", "sjf", "ssjf"])
def test_guarded_admission_leaves_non_preemptive_policies_unchanged(policy: str):
    """A non-preemptive policy ranks every resident ahead of every waiting request, so no waiting request ever
    has a lower-ranked resident to displace: both rules give the same run, field by field, under memory
    pressure that makes residents evict each other as they grow."""
    case = random_case(13, n=80)
    worst = int((case["prompt_tokens"] + case["output_tokens"]).max()) + 16 + 5
    runs = []
    for admission in ("greedy", "guarded"):
        for preemption in ("swap", "recompute"):
            cfg = BatchConfig(mode="continuous", max_batch=16, max_batch_tokens=256, kv_capacity_tokens=worst * 4,
                              preemption=preemption, admission=admission)
            runs.append(run(case, policy, cfg, linear_cost(), reference=False))
    (greedy_swap, e1), (greedy_recompute, _), (guarded_swap, _), (guarded_recompute, _) = runs
    assert greedy_swap.preemptions.sum() > 0  # memory pressure: residents are evicted
    for field in FIELDS:
        assert np.array_equal(getattr(greedy_swap, field), getattr(guarded_swap, field)), field
        assert np.array_equal(getattr(greedy_recompute, field), getattr(guarded_recompute, field)), field


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


@pytest.mark.parametrize("policy", POLICIES)
def test_compiled_loop_reports_progress_and_stays_within_the_table(policy: str):
    """Progress counts rise to n (tests/test_progress.py: the timing); recompute never runs a request past its
    table's steps (a re-prefill's extra token only shortens it); the reference agrees."""
    case = random_case(11, n=60)
    worst = int((case["prompt_tokens"] + case["output_tokens"]).max()) + 16 + 5
    # prompts are < 200 tokens, so a (re-)prefill completes in one step: with smaller chunks, preemptive
    # policies under recompute can evict each other's partial prefills forever
    config = BatchConfig(mode="continuous", max_batch=8, max_batch_tokens=256, kv_capacity_tokens=worst + 48,
                         preemption="recompute")
    results = []
    for reference in (False, True):
        state = create_state(**case, cost=linear_cost())
        state.acceptance = create_acceptance(state, 0.6, 3)
        table = table_for(state, state.acceptance)
        calls: list[int] = []
        engine = serve_state(state, make_policy(policy), config, reference, calls.append)
        assert calls == sorted(set(calls)) and calls[-1] == state.n
        assert np.all(state.decode_steps + 1 <= table.n_steps)
        results.append((state, engine))
    (fast, fast_engine), (slow, engine) = results
    for field in FIELDS:
        assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
    np.testing.assert_equal(fast_engine.stats(), engine.stats())


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
        assert fast_engine.max_batch_seen > 32
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
        state.acceptance = acc
        runs.append((state, serve_state(state, make_policy(name, copy.deepcopy(params)), config, reference)))
    (fast, fast_engine), (slow, engine) = runs
    assert fast.done.all() and np.array_equal(fast.generated, fast.output_tokens)
    for field in FIELDS:
        assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
    np.testing.assert_equal(fast_engine.stats(), engine.stats())


def livelock_case(policy: str, preemption: str = "recompute", admission: str = "greedy"):
    """Two 200-token prompts prefilled in 64-token chunks with room for one and a bit: a policy that ranks
    the less-served request first (las, rr) evicts the other mid-prefill every step."""
    state = create_state(arrival_s=[0.0, 0.0], output_tokens=[5, 5], prompt_tokens=[200, 200], cost=linear_cost())
    state.acceptance = create_acceptance(state, 0.5, 3)
    config = BatchConfig(mode="continuous", max_batch=4, max_batch_tokens=64, kv_capacity_tokens=256.0,
                         preemption=preemption, block_size=16, admission=admission)
    return state, lambda reference: serve_state(state, make_policy(policy), config, reference)


@pytest.mark.parametrize("policy", ["las", "rr"])
@pytest.mark.parametrize("reference", [False, True])
def test_recompute_livelock_is_reported_not_simulated_forever(policy: str, reference: bool):
    state, engine = livelock_case(policy)
    with pytest.raises(LapsbenchError, match=rf"scheduler {policy}: livelock — 3,328 prefill tokens .* the 2 "
                                             r"requests present.*recompute preemption") as info:
        engine(reference)
    assert "\n" not in str(info.value)
    assert not state.done.any() and state.preemptions.sum() > 20  # evicted over and over, nothing finished


@pytest.mark.parametrize(("policy", "preemption"), [("las", "swap"), ("rr", "swap"), ("fcfs", "recompute"),
                                                    ("srpt", "recompute")])
@pytest.mark.parametrize("admission", ["greedy", "guarded"])
def test_same_pressure_without_the_livelock_completes(policy: str, preemption: str, admission: str):
    """Swap keeps prefill progress; fcfs / srpt keep ranking the same request first: all finish."""
    for reference in (False, True):
        state, engine = livelock_case(policy, preemption, admission)
        engine(reference)
        assert state.done.all()


@pytest.mark.parametrize("policy", ["las", "rr"])
def test_guarded_admission_does_not_livelock(policy: str):
    """The livelock case under guarded admission: a partial prefill (a chunk of engine time) is not worth its
    recompute, so an evicted request waits for memory instead of evicting the other back: both finish."""
    for reference in (False, True):
        state, engine = livelock_case(policy, admission="guarded")
        engine(reference)
        assert state.done.all()


def test_compiled_loop_reads_32_bit_token_tables():
    """An output of 32,767 tokens or more makes the step table's tokens int32 (else int16): the compiled
    loop, specialised per dtype, still equals the step-by-step reference."""
    case = dict(arrival_s=[0.0, 0.0, 0.1, 0.2], output_tokens=[33_000, 40, 7, 90], prompt_tokens=[50, 20, 30, 10],
                k=4, request_id=[5, 1, 9, 3])
    config = BatchConfig(mode="continuous", max_batch=2, max_batch_tokens=64)
    fast, _ = run(case, "las", config, linear_cost(), reference=False)
    slow, _ = run(case, "las", config, linear_cost(), reference=True)
    from lapsbench.engine.steptable import _token_dtype

    assert _token_dtype(fast.output_tokens) is np.int32
    for name in FIELDS:
        assert np.array_equal(getattr(fast, name), getattr(slow, name), equal_nan=True), name


def test_non_preemptive_requests_frames_identical_under_both_admission_rules(tmp_path):
    """End to end (runner, measured H100 profile, a KV cache small enough for residents to evict each other):
    the requests frame of fcfs, sjf and ssjf is the same under guarded (the default) and greedy admission —
    greedy being the engine's rule before admission existed — while las, which ranks newcomers first, changes."""
    trace = write_canonical_trace(tmp_path / "trace.parquet", n=300, seed=4, rate=40.0)
    frames = {}
    for admission in ("greedy", "guarded"):
        s = parse_scenario({
            "name": "t", "seed": 2, "trace": {"path": str(trace)}, "model": {"profile": "h100-llama2-7b"},
            "speculation": {"k": 4, "acceptance": {"kind": "fixed", "alpha": 0.7}},
            "engine": {"batching": "continuous", "max_batch": 32, "max_batch_tokens": 2048,
                       "kv_capacity_tokens": 6000, "preemption": "swap", "admission": admission},
            "scheduler": [{"name": n} for n in ("fcfs", "sjf", "ssjf", "las")]})
        frames[admission] = run_scenario(s).requests
    greedy, guarded = frames["greedy"], frames["guarded"]
    for name in ("fcfs", "sjf", "ssjf"):
        a, b = (f.filter(pl.col("scheduler") == name) for f in (greedy, guarded))
        assert a.height == 300 and a.equals(b), name
    fcfs = greedy.filter(pl.col("scheduler") == "fcfs")
    assert fcfs["preemptions"].sum() > 0  # memory pressure: growing residents evict each other
    las = [f.filter(pl.col("scheduler") == "las") for f in (greedy, guarded)]
    assert not las[0].equals(las[1])
    assert las[1]["preemptions"].sum() < las[0]["preemptions"].sum()
