"""Property-based check (hypothesis): on randomized small scenarios, the fast engines give exactly the
per-request results of their step-by-step counterparts — across every registered policy (and LAPS-SD's
three placements), every batching mode (continuous with both admission rules) and the fixed, beta
(drift + AR(1)) and empirical acceptance processes, every `[speculation] adaptive` kind (batched: K chosen
per step, goodput also per request, off-under-load also with free_draft_memory — the KV capacity switching
with SD, evictions when it shrinks, the draft KV rebuilt; batch 1: the constant K of
lapsbench.config.speculation.batch1_k, or goodput's K per step from its step table), on the fixed profile and a
fitted-form one. The fast batched engine is the compiled loop (lapsbench/engine/batched.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reference_batched import ReferenceBatched

from lapsbench.config.speculation import BatchTableSpec, GoodputSpec, OffUnderLoadSpec, batch1_k
from lapsbench.engine.batch1_goodput import build_goodput_step_table
from lapsbench.engine.context import BatchConfig
from lapsbench.errors import LapsbenchError
from lapsbench.models import rng
from lapsbench.models.acceptance import BetaAcceptance, EmpiricalAcceptance, FixedAcceptance
from lapsbench.models.cost import CostModel, PhaseModel, fixed_profile
from lapsbench.models.kchoice import pack_adaptive
from lapsbench.schedulers import make_policy, registry

from conftest import create_state, simulate
from reference_engine import reference_simulate

# every registered policy with its defaults, plus LAPS-SD's other placements (the default is "perceived")
POLICIES = [(name, {}) for name in sorted(registry())] + [
    ("laps-sd", {"perceptible_policy": "queue"}),
    ("laps-sd", {"perceptible_policy": "global-srpt", "window": 2, "min_steps": 2, "tolerance": 0.3}),
    ("laps-sd", {"perceptible_policy": "perceived", "unit": "steps", "window": 2, "min_steps": 2, "tolerance": 0.3}),
]
FIELDS = ("generated", "steps", "decode_steps", "attained_s", "first_token_s", "finish_s", "preemptions")


def acceptance_for(kind: str, state, seed: int):
    key = rng.stream_key(seed, 0, rng.Streams.ACCEPTANCE)
    n, k = state.n, state.k
    g = np.random.default_rng(seed)
    if kind == "fixed":
        return FixedAcceptance(g.uniform(0, 0.95, n), state.request_id, k, key)
    if kind == "beta":
        return BetaAcceptance.build(g.beta(7, 3, n), state.request_id, state.output_tokens, k, key,
                                    rng.stream_key(seed, 0, rng.Streams.ACCEPTANCE_PARAMS), initial=0.3,
                                    warmup_steps=4.0, ar_phi=0.8, ar_sigma=0.1)
    lists = [g.integers(1, 7, int(g.integers(1, 40))) for _ in range(n)]
    return EmpiricalAcceptance.build(lists, state.request_id, state.output_tokens, k, key)


SPACE = {
    "n": st.integers(1, 14),
    "seed": st.integers(0, 10_000),
    "k": st.integers(0, 4),
    "policy": st.sampled_from(POLICIES),
    "mode": st.sampled_from(["none", "static", "dynamic", "continuous"]),
    "acceptance": st.sampled_from(["fixed", "beta", "empirical"]),
    "max_batch": st.integers(1, 6),
    "tight_memory": st.booleans(),
    "preemption": st.sampled_from(["swap", "recompute"]),
    "admission": st.sampled_from(["guarded", "greedy"]),
    "admission_share": st.sampled_from([0.0, 0.05, 1.0, 20.0]),
    "adaptive": st.sampled_from(["none", "batch-table", "goodput", "goodput-per-request", "off-under-load",
                                 "off-under-load-free"]),
    "cost": st.sampled_from(["fixed", "fitted"]),
}
scenarios = st.fixed_dictionaries(SPACE)
# the same space with speculation on and an adaptive kind always set, so that every kind is drawn often
adaptive_scenarios = st.fixed_dictionaries(SPACE | {
    "k": st.integers(1, 4), "adaptive": st.sampled_from(["batch-table", "goodput", "goodput-per-request",
                                                         "off-under-load", "off-under-load-free"])})

# a fitted-form profile (ms): costs grow with tokens, context and batch, so mixed K's are priced apart
FITTED = CostModel(name="fitted", target=PhaseModel({"const": 5.0, "tokens": 0.4, "context": 0.002}),
                   target_prefill=PhaseModel({"const": 2.0, "tokens": 0.05}),
                   draft=PhaseModel({"const": 0.8, "batch": 0.3}),
                   draft_prefill=PhaseModel({"const": 0.2, "tokens": 0.005}))
# ... with KV bytes per token that free_draft_memory can read: the target's a third of the draft's (tinyllama's
# shape), so SD off almost quadruples the KV capacity
FITTED_FREE = dataclasses.replace(FITTED, name="fitted-kv", kv_bytes_per_token=7510.0, host_link_gb_s=1.0,
                                  meta={"draft": "tinyllama-1.1b"})

# off-under-load with free_draft_memory, batched, memory mostly tight, SD off from a nearly full batch, prompts up
# to 200 tokens (prefilled over several steps) and outputs up to 120 (requests outgrow the memory they entered
# with), so that when SD turns back on the residents often exceed the capacity: the capacity switch, the eviction
# pass when it shrinks and the draft rebuild
free_draft_scenarios = st.fixed_dictionaries(SPACE | {
    "n": st.integers(6, 14), "k": st.integers(1, 4), "adaptive": st.just("off-under-load-free"),
    "mode": st.sampled_from(["static", "dynamic", "continuous", "continuous", "continuous", "continuous"]),
    "tight_memory": st.sampled_from([True, True, True, False]), "max_batch": st.integers(3, 6),
    "off_below": st.integers(0, 2), "prompt_max": st.sampled_from([20, 20, 200]),
    "output_max": st.sampled_from([30, 120, 120])})


def adaptive_for(kind: str, k: int, max_batch: int, off_batch: int | None = None):
    """An adaptive spec valid for maximum `k` whose choice changes within batches of `max_batch` (None: fixed k);
    off-under-load switches at `off_batch` decoding requests (default: half the batch)."""
    if kind == "none" or k == 0:
        return None
    if kind == "batch-table":
        return BatchTableSpec(table=((1, k), (2, max(k - 1, 0)), (4, 0)))
    if kind.startswith("goodput"):  # a cheap draft and a weak prior: K changes as acceptance is observed
        return GoodputSpec(k_max=k, prior_alpha=0.5, prior_strength=1.0, per_request=kind == "goodput-per-request")
    return OffUnderLoadSpec(batch=off_batch or max(1, max_batch // 2), free_draft_memory=kind == "off-under-load-free")


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios)
def test_fast_engine_equals_stepwise_engine(case: dict) -> None:
    check_case(case)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(adaptive_scenarios)
def test_fast_engine_equals_stepwise_engine_adaptive(case: dict) -> None:
    check_case(case)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(free_draft_scenarios)
def test_fast_engine_equals_stepwise_engine_free_draft_memory(case: dict) -> None:
    check_case(case)


def check_case(case: dict) -> None:
    """The fast engine and its step-by-step counterpart agree on `case`."""
    g = np.random.default_rng(case["seed"])
    n = case["n"]
    arrival = np.maximum.accumulate(np.round(np.cumsum(g.exponential(0.05, n)) * (g.random(n) > 0.3), 3))
    off_batch = max(2, case["max_batch"] - case["off_below"]) if "off_below" in case else None
    spec = adaptive_for(case["adaptive"], case["k"], case["max_batch"], off_batch)
    k = case["k"]
    batch1_goodput = case["mode"] == "none" and isinstance(spec, GoodputSpec)  # K per step, in the step table
    where = "batch 1" if case["mode"] == "none" else "batched"
    event(f"{case['adaptive'] if spec is not None else 'fixed k'}, {where}")  # --hypothesis-show-statistics
    if case["mode"] == "none" and spec is not None and not batch1_goodput:  # batch 1: a constant K
        k, spec = batch1_k(spec, k), None
    packed = pack_adaptive(spec, k) if spec is not None else None
    cost = fixed_profile(0.01, 0.002, 1e-4) if case["cost"] == "fixed" else FITTED
    if case["adaptive"] == "off-under-load-free":  # it needs the KV bytes of target and draft
        cost = FITTED_FREE
    workload = dict(arrival_s=arrival, output_tokens=g.integers(1, case.get("output_max", 30), n),
                    prompt_tokens=g.integers(1, case.get("prompt_max", 60), n),
                    k=k, cost=cost,
                    request_id=g.permutation(100 * n)[:n])
    runs = []
    for stepwise in (False, True):
        state = create_state(**workload)
        state.acceptance = acceptance_for(case["acceptance"], state, case["seed"])
        policy = make_policy(*case["policy"])
        if case["mode"] == "none":
            table = (build_goodput_step_table(state.prompt_tokens, state.output_tokens, k, state.cost,
                                              state.acceptance, packed) if batch1_goodput else None)
            if stepwise:
                reference_simulate(state, policy, state.acceptance, table)
            else:
                simulate(state, policy, state.acceptance, table=table)
                if batch1_goodput:  # drafted = Σ K of the request's steps in the table
                    assert np.array_equal(state.drafted, np.add.reduceat(table.k_steps, table.offset[:-1]))
        else:
            worst = int((state.prompt_tokens + state.output_tokens).max()) + state.k + 1
            capacity = float(worst + 16) if case["tight_memory"] else np.inf
            config = BatchConfig(mode=case["mode"], max_batch=case["max_batch"],
                                 max_batch_tokens=max(64, case["max_batch"] * (state.k + 1)),
                                 kv_capacity_tokens=capacity, preemption=case["preemption"], block_size=8,
                                 admission=case["admission"], admission_share=case["admission_share"])
            try:
                if stepwise:
                    ref = ReferenceBatched(state, policy, state.acceptance, config, adaptive=packed)
                    ref.run()
                    state.engine_stats = ref.stats()
                else:
                    simulate(state, policy, state.acceptance, batching=config, check=True, adaptive=packed)
            except LapsbenchError as e:  # a livelock (recompute, tight memory): both must report the same one
                assert "livelock" in str(e)
                runs.append(str(e))
                continue
            if not stepwise:
                if packed is None:
                    assert np.array_equal(state.drafted, state.k * state.decode_steps)
                else:  # every step drafts a K in 0..k_max
                    assert (state.drafted <= packed.k_max * state.decode_steps).all()
        runs.append(state)
    fast, slow = runs
    if isinstance(fast, str) or isinstance(slow, str):
        assert fast == slow
        return
    assert fast.done.all() and np.array_equal(fast.generated, fast.output_tokens)
    for field in FIELDS + ("drafted",):
        assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
    if packed is not None and case["mode"] != "none":
        for key in ("k_mean", "sd_off_share"):
            assert fast.engine_stats[key] == slow.engine_stats[key], key
    if case["mode"] != "none":  # and the engine statistics (KV use, evictions) with them
        for key, value in slow.engine_stats.items():
            assert fast.engine_stats[key] == value or np.isnan(value) and np.isnan(fast.engine_stats[key]), key
