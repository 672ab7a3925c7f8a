"""Every registered policy (and a few non-default parameter sets) against the invariants of the policy
contract, on small random scenarios: the compiled engine equals the step-by-step reference engine field by
field, the same seed twice gives identical results, every request finishes exactly once with all its
tokens, and no request finishes before it could have (arrival + attained service)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lapsbench.models import rng
from lapsbench.models.acceptance import BetaAcceptance, EmpiricalAcceptance, FixedAcceptance
from lapsbench.models.cost import fixed_profile, load_profile_file
from lapsbench.schedulers import make_policy, registry

from conftest import REPO, create_state, simulate
from reference_engine import reference_simulate

FIELDS = ("generated", "steps", "attained_s", "last_service_s", "first_token_s", "finish_s", "preemptions", "done")

VARIANTS = [(name, {}) for name in sorted(registry())] + [
    ("mlfq", {"promote_idle_s": 0.05, "promote_period": 7}),
    ("mlfq", {"within_level": "fifo", "unit": "tokens", "base_quantum_s": 2.0}),
    ("mlfq", {"unit": "steps", "base_quantum_s": 1.0}),
    ("skip-join-mlfq", {"starve_limit_s": 0.08, "levels": 4}),
    ("skip-join-mlfq", {"unit": "tokens", "levels": 3}),
    ("ltr", {"starvation_steps": 5, "boost_steps": 2}),
    ("ltr", {"starvation_steps": 0, "predictor": "oracle"}),
    ("ssjf", {"starvation_s": 0.05, "starvation_factor": 2.0}),
    ("ssjf", {"predictor": "lognormal", "starvation_guard": False}),
    ("laps-sd", {"perceptible_policy": "global-srpt", "window": 2, "min_steps": 2, "tolerance": 0.2}),
    ("laps-sd", {"perceptible_policy": "queue", "window": 2, "min_steps": 2, "tolerance": 0.2}),
    ("laps-sd", {"perceptible_policy": "queue", "unit": "steps", "window": 1, "min_steps": 1, "tolerance": 0.5}),
    ("laps-sd", {"perceptible_policy": "perceived", "unit": "steps", "thresholds": [3.0, 8.0, 20.0], "window": 2,
                 "min_steps": 2, "tolerance": 0.3, "predictor": "oracle"}),
    ("laps-sd", {"perceptible_policy": "perceived", "base_quantum": 0.004, "ratio": 1.5, "window": 2,
                 "min_steps": 3, "tolerance": 0.25, "acceptance_prior_strength": 2.0}),
    ("laps-sd", {"unit": "steps", "window": 1, "min_steps": 1, "tolerance": 0.5, "predictor": "bucketed"}),
    ("laps-sd", {"unit": "tokens", "num_queues": 3, "acceptance_prior_strength": 4.0, "predictor": "rank"}),
    ("laps-sd", {"perceptible_policy": "global-srpt", "global_after_queue": 2, "window": 3, "min_steps": 3,
                 "tolerance": 0.3, "base_quantum": 0.01}),
    ("las", {"unit": "seconds"}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(VARIANTS)]
H100 = load_profile_file(REPO / "profiles" / "h100-llama3-8b.toml")


def random_case(seed: int):
    g = np.random.default_rng(seed)
    n = int(g.integers(8, 22))
    k = int(g.choice([0, 2, 4]))
    cost = H100 if seed % 2 else fixed_profile(0.01, 0.002 if k else 0.0, 1e-5 * (seed % 3))
    arrivals = np.cumsum(g.exponential(0.05, n)) * (seed % 4 != 0)  # every 4th case: all at time 0
    state = create_state(arrivals, g.integers(1, 60, n), g.integers(1, 400, n), k=k, cost=cost,
                         request_id=g.permutation(1000)[:n])
    state.seed, state.replication = seed, 1
    key = rng.stream_key(seed, 1, rng.Streams.ACCEPTANCE)
    kind = seed % 3
    if kind == 0:
        acc = FixedAcceptance(g.uniform(0.2, 0.9, n), state.request_id, k, key)
    elif kind == 1:
        acc = BetaAcceptance.build(g.uniform(0.3, 0.9, n), state.request_id, state.output_tokens, k, key,
                                   rng.stream_key(seed, 1, 99), initial=0.3, warmup_steps=3.0, ar_phi=0.8,
                                   ar_sigma=0.1)
    else:
        lists = [g.integers(1, 8, int(g.integers(2, 40))) for _ in range(n)]
        acc = EmpiricalAcceptance.build(lists, state.request_id, state.output_tokens, k, key)
    state.acceptance = acc
    return state, acc


def run(engine, name, params, seed, **options):
    state, acc = random_case(seed)
    return engine(state, make_policy(name, params), acc, **options)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=IDS)
def test_fast_engine_equals_reference(name, params, seed):
    """The compiled batch-1 engine equals the step-by-step reference; drafted = k x decode steps."""
    fast = run(simulate, name, copy.deepcopy(params), seed)
    assert np.array_equal(fast.drafted, fast.k * fast.decode_steps)
    ref = run(reference_simulate, name, copy.deepcopy(params), seed)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(fast, f), getattr(ref, f), err_msg=f"{name} {params} seed {seed}: {f}")


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=IDS)
def test_invariants_and_determinism(name, params):
    for seed in (11, 12, 13):
        a = run(simulate, name, copy.deepcopy(params), seed)
        b = run(simulate, name, copy.deepcopy(params), seed)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert a.done.all()
        np.testing.assert_array_equal(a.generated, a.output_tokens)
        assert np.all(a.finish_s >= a.arrival_s + a.attained_s - 1e-9)
        assert np.all(a.first_token_s <= a.finish_s)
        # every request finishes exactly once: finish times are distinct step ends at batch size 1
        assert np.unique(a.finish_s).size == a.n


def test_the_dispatch_table_is_the_registry():
    """One code per registered scheduler; an unknown code raises (no fall-through to another policy)."""
    from lapsbench.schedulers import dispatch

    assert sorted(dispatch.CODE) == sorted(registry())
    assert [dispatch.code_of(make_policy(name)) for name in dispatch.CODE] == list(range(len(dispatch.CODE)))
    for code in range(len(dispatch.CODE)):
        assert dispatch.observes(code) == hasattr(registry()[dispatch.BUILTIN[code].name], "observe")
    with pytest.raises(ValueError, match="unknown scheduler code"):
        dispatch.observes(len(dispatch.CODE))


def test_registry_has_the_paper_schedulers():
    assert {"laps-sd", "ssjf", "mlfq", "skip-join-mlfq", "ltr", "srpt-sd"} <= set(registry())
