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
from lapsbench.models.cost import fixed_profile
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
