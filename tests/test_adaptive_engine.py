"""Adaptive K in the compiled batched engine (docs/speculation.md §5): a choice that always returns the fixed k
reproduces the fixed-K run bit for bit (the draws at the maximum k capped at K are the step table's tokens, and
the mixed-K price at K = k is the fixed price); off-under-load switches SD off while the batch is large; every
step's K is within the choice's range."""

from __future__ import annotations

import numpy as np
import pytest

from lapsbench.config.speculation import BatchTableSpec, GoodputSpec, OffUnderLoadSpec
from lapsbench.engine.context import BatchConfig
from lapsbench.models import rng
from lapsbench.models.acceptance import FixedAcceptance
from lapsbench.models.cost import CostModel, PhaseModel, fixed_profile
from lapsbench.models.kchoice import pack_adaptive
from lapsbench.schedulers import make_policy

from conftest import create_state, simulate

FIELDS = ("generated", "steps", "decode_steps", "drafted", "attained_s", "first_token_s", "finish_s")


def run(spec, k: int = 4, n: int = 24, mode: str = "continuous", policy: str = "fcfs"):
    g = np.random.default_rng(5)
    state = create_state(np.sort(g.uniform(0, 0.2, n)), g.integers(2, 60, n), g.integers(1, 40, n), k=k,
                         cost=fixed_profile(0.01, 0.002, 1e-4))
    acc = FixedAcceptance(g.uniform(0.3, 0.9, n), state.request_id, k, rng.stream_key(5, 0, rng.Streams.ACCEPTANCE))
    config = BatchConfig(mode=mode, max_batch=8, max_batch_tokens=256)
    packed = None if spec is None else pack_adaptive(spec, k)
    return simulate(state, make_policy(policy), acc, batching=config, check=True, adaptive=packed)


@pytest.mark.parametrize("mode", ["static", "dynamic", "continuous"])
@pytest.mark.parametrize("policy", ["fcfs", "laps-sd"])
def test_choice_of_the_fixed_k_is_the_fixed_run(mode: str, policy: str) -> None:
    fixed = run(None, mode=mode, policy=policy)
    table = run(BatchTableSpec(table=((1, 4),)), mode=mode, policy=policy)
    off = run(OffUnderLoadSpec(batch=1000), mode=mode, policy=policy)
    for other in (table, off):
        for field in FIELDS:
            assert np.array_equal(getattr(fixed, field), getattr(other, field)), field
        assert other.engine_stats["k_mean"] == 4.0 and other.engine_stats["sd_off_share"] == 0.0


def test_off_under_load_switches_sd_off_while_the_batch_is_large() -> None:
    s = run(OffUnderLoadSpec(batch=4))
    fixed = run(None)
    assert 0.0 < s.engine_stats["sd_off_share"] < 1.0
    assert 0.0 < s.engine_stats["k_mean"] < 4.0
    assert (s.drafted < fixed.drafted).any() and (s.decode_steps >= fixed.decode_steps).sum() > 0
    assert np.array_equal(s.generated, s.output_tokens)


def test_goodput_and_table_stay_in_range() -> None:
    for spec, top in ((GoodputSpec(k_max=3), 3), (BatchTableSpec(table=((1, 3), (3, 1), (6, 0))), 3)):
        s = run(spec)
        assert (s.drafted <= top * s.decode_steps).all()
        assert 0.0 <= s.engine_stats["k_mean"] <= top


# free_draft_memory, worked by hand (docs/speculation.md §5). Costs (ms): verify 10 per step, draft forward 1,
# target prefill 2 + 0.1 per token, draft prefill 1 + 0.05 per token; the target's KV bytes per token equal the
# draft's (tinyllama-1.1b's shape), so SD off doubles the capacity: 48 → 96 tokens. A, B, C (prompt 16, output
# 6 / 3 / 2) arrive at 0; k = 2, SD off while >= 2 resident requests decode; α = 0 (every step emits 1 token).
# Each request needs 24 KV slots (16 + generated + k + 1, in blocks of 8) throughout.
HAND = CostModel(name="hand", target=PhaseModel({"const": 10.0}),
                 target_prefill=PhaseModel({"const": 2.0, "tokens": 0.1}), draft=PhaseModel({"const": 1.0}),
                 draft_prefill=PhaseModel({"const": 1.0, "tokens": 0.05}),
                 kv_bytes_per_token=22528.0, meta={"draft": "tinyllama-1.1b"})


def run_hand(free: bool):
    state = create_state(np.zeros(3), [6, 3, 2], [16, 16, 16], k=2, cost=HAND)
    acc = FixedAcceptance(np.zeros(3), state.request_id, 2, rng.stream_key(0, 0, rng.Streams.ACCEPTANCE))
    config = BatchConfig(mode="continuous", max_batch=3, max_batch_tokens=256, kv_capacity_tokens=48.0, block_size=8)
    return simulate(state, make_policy("fcfs"), acc, batching=config, check=True,
                    adaptive=pack_adaptive(OffUnderLoadSpec(batch=2, free_draft_memory=free), 2))


def test_free_draft_memory_by_hand() -> None:
    """Step 1 (SD on, capacity 48): A and B prefill, 5.2 + draft prefill 2.6 = 7.8 ms; C does not fit. Step 2
    (2 resident decoding: off, capacity 96): A, B decode at K = 0 and C joins — admitted only because the draft's
    memory was freed — prefilling without a draft prefill: 10 + 3.6 = 13.6 ms. Step 3 (off): A, B, C decode,
    10 ms; B and C finish (31.4 ms). Step 4 (only A resident: SD on, capacity 48): A's draft KV was freed, so the
    draft first prefills A's whole context (16 + 3 tokens: 1 + 0.95 ms), then A drafts 2: 10 + 2 + 1.95 = 13.95
    ms. Steps 5, 6: 12 ms each (its draft KV is current)."""
    s = run_hand(True)
    ms = 1e-3
    assert s.first_token_s == pytest.approx(np.array([7.8, 7.8, 21.4]) * ms)
    assert s.finish_s == pytest.approx(np.array([69.35, 31.4, 31.4]) * ms)
    assert np.array_equal(s.drafted, [2 * 3, 0, 0])  # A drafts 2 in its three steps with SD on
    assert s.engine_stats["kv_util_max"] == pytest.approx(72 / 48)  # relative to the capacity with SD on
    assert s.engine_stats["evictions_mean"] == 0.0
    assert s.engine_stats["sd_turned_on"] == 1.0  # at step 4, rebuilding A's draft KV over 19 tokens
    assert s.engine_stats["draft_rebuilds_mean"] == 1 / 3 and s.engine_stats["draft_rebuild_tokens_mean"] == 19 / 3
    # without freeing the draft's memory C waits for B: steps 2, 3 (A, B decode at K = 0) 10 ms each, B finishes
    # (27.8 ms); step 4: A drafts 2 (12 ms) and C prefills with the draft prefill (3.6 + 1.8 ms), no rebuild
    kept = run_hand(False)
    assert kept.first_token_s == pytest.approx(np.array([7.8, 7.8, 27.8 + 17.4]) * ms)
    assert kept.first_token_s[2] > s.first_token_s[2] and kept.engine_stats["kv_util_max"] == 1.0


def test_free_draft_memory_evicts_when_sd_turns_back_on() -> None:
    """With SD off the residents outgrow the capacity SD on leaves; when SD turns back on the lowest-ranked one
    is evicted before admission (check=True asserts used <= capacity after every step). A, B (prompt 8, output
    40) and C, D (prompt 1, output 15) all fit at step 1 (16 + 16 + 8 + 8 of 56 slots); from step 2 (4 resident
    decoding >= 3) SD is off and the capacity 112; at step 15 they hold 32 + 32 + 24 + 24 = 112 and C, D finish,
    A, B still holding 64; at step 16 only A, B decode (2 < 3): SD on, capacity 56 < 64 used, so B (ranked below
    A under fcfs) is swapped out and waits for A; A's draft KV is rebuilt over 8 + 15 tokens then, B's when it
    returns."""
    state = create_state(np.zeros(4), [40, 40, 15, 15], [8, 8, 1, 1], k=2, cost=HAND)
    acc = FixedAcceptance(np.zeros(4), state.request_id, 2, rng.stream_key(0, 0, rng.Streams.ACCEPTANCE))
    config = BatchConfig(mode="continuous", max_batch=4, max_batch_tokens=256, kv_capacity_tokens=56.0, block_size=8,
                         admission="greedy")
    s = simulate(state, make_policy("fcfs"), acc, batching=config, check=True,
                 adaptive=pack_adaptive(OffUnderLoadSpec(batch=3, free_draft_memory=True), 2))
    assert np.array_equal(s.generated, s.output_tokens)
    assert np.array_equal(s.preemptions, [0, 1, 0, 0]) and s.engine_stats["evictions_mean"] == 0.25
    # the KV maximum is taken at a step's end, after finished requests leave: 96 slots at step 14
    assert s.engine_stats["kv_util_max"] == 96 / 56 and s.engine_stats["sd_turned_on"] == 1.0
    assert s.engine_stats["draft_rebuilds_mean"] == 0.5 and s.engine_stats["draft_rebuild_tokens_mean"] == 46 / 4
    assert s.finish_s[1] > s.finish_s[0] > s.finish_s[2] == s.finish_s[3]
