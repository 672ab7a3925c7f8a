"""Acceptance processes: closed forms for beta (with warm-up drift and AR(1) fluctuation), exact replay
of the empirical file, scenario wiring and bad input."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lapsbench.config.scenario import parse_scenario
from lapsbench.errors import LapsbenchError
from lapsbench.models import rng
from lapsbench.models.acceptance import (
    BetaAcceptance,
    EmpiricalAcceptance,
    acceptance_records,
    beta_mean_tokens_per_step,
    segmented_ar1,
    walk_mean_tokens_per_step,
)
from lapsbench.run.assembly import build_acceptance, load_workload
from lapsbench.schedulers import make_policy

from cli_helpers import lapsbench
from conftest import REPO, create_state, simulate

DATA = str(REPO / "data" / "acceptance" / "specdecode_bench_llama31_8b_h100.parquet")


def beta_process(n: int, steps: int, mean: float, conc: float, k: int, **kw) -> BetaAcceptance:
    g = np.random.default_rng(5)
    alpha = g.beta(mean * conc, (1 - mean) * conc, n)
    rid = np.arange(n)
    return BetaAcceptance.build(alpha, rid, np.full(n, steps + 1), k, rng.stream_key(1, 0, 1),
                                rng.stream_key(1, 0, 2), **kw)


def check_mean(draws: np.ndarray, expected: float) -> None:
    """draws: (requests, steps); the CI uses per-request means (requests are independent)."""
    per_request = draws.mean(axis=1)
    se = per_request.std(ddof=1) / np.sqrt(per_request.size)
    assert abs(per_request.mean() - expected) < 4 * se, (per_request.mean(), expected, se)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_beta_mean_tokens_per_step_matches_closed_form(k):
    n, steps = 20000, 40
    acc = beta_process(n, steps, 0.7, 20.0, k)
    req = np.repeat(np.arange(n), steps)
    step = np.tile(np.arange(steps), n)
    draws = acc.emitted(req, step, step).reshape(n, steps)
    check_mean(draws, beta_mean_tokens_per_step(0.7, 20.0, k))


def test_beta_warmup_drift_matches_closed_form_per_step():
    n, k = 40000, 4
    acc = beta_process(n, 30, 0.75, 30.0, k, initial=0.3, warmup_steps=5.0)
    for s in (0, 3, 10, 25):
        draws = acc.emitted(np.arange(n), np.full(n, s), np.zeros(n, np.int64))
        expected = beta_mean_tokens_per_step(0.75, 30.0, k, step=s, initial=0.3, warmup_steps=5.0)
        se = draws.std(ddof=1) / np.sqrt(n)
        assert abs(draws.mean() - expected) < 4 * se, (s, draws.mean(), expected)
    # the drift is visible: step 0 is much closer to the initial value than step 25
    early = beta_mean_tokens_per_step(0.75, 30.0, k, 0, 0.3, 5.0)
    assert early < beta_mean_tokens_per_step(0.75, 30.0, k, 25, 0.3, 5.0) - 1


def test_beta_ar1_fluctuation_matches_closed_form_and_is_correlated():
    n, steps, k = 20000, 30, 3
    acc = beta_process(n, steps, 0.6, 100.0, k, ar_phi=0.9, ar_sigma=0.05)
    req = np.repeat(np.arange(n), steps)
    step = np.tile(np.arange(steps), n)
    draws = acc.emitted(req, step, step).reshape(n, steps)
    check_mean(draws, beta_mean_tokens_per_step(0.6, 100.0, k, ar_sigma=0.05))
    assert acc.ar is not None
    x = acc.ar.reshape(n, steps)
    assert x.std() == pytest.approx(0.05, rel=0.05)  # stationary σ
    lag1 = np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1]
    assert lag1 == pytest.approx(0.9, abs=0.02)


def test_segmented_ar1_equals_the_recursion():
    g = np.random.default_rng(0)
    lengths = [1, 7, 33, 2]
    e = g.normal(size=sum(lengths))
    starts = np.repeat(np.cumsum([0] + lengths[:-1]), lengths)
    x = segmented_ar1(e, starts, 0.7)
    expected = []
    i = 0
    for L in lengths:
        prev = 0.0
        for _ in range(L):
            prev = 0.7 * prev + e[i]
            expected.append(prev)
            i += 1
    np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize(("dataset", "method"), [("sharegpt", "eagle"), ("instructcoder", "ngram")])
def test_empirical_replay_reproduces_file_mean_exactly(dataset, method, k):
    """Requests as long as their lists, replayed through the engine: tokens per speculative step equal
    the file's walk mean (computed by a plain loop) exactly, as a fraction."""
    lists = acceptance_records(DATA, dataset, method)
    out = np.array([len(a) for a in lists])
    state = create_state(np.zeros(len(lists)), out, k=k)
    acc = EmpiricalAcceptance.build(lists, state.request_id, out, k, rng.stream_key(0, 0, 1))
    simulate(state, make_policy("fcfs"), acc)
    engine_mean = Fraction(int((state.generated - 1).sum()), int(state.decode_steps.sum()))
    walk = walk_mean_tokens_per_step(lists, k)
    tokens = steps = 0
    for a in lists:  # the same walk, kept as a fraction
        p = 1
        while p < len(a):
            e = min(int(a[p]), k + 1, len(a) - p)
            tokens, steps, p = tokens + e, steps + 1, p + e
    assert engine_mean == Fraction(tokens, steps)
    assert float(engine_mean) == pytest.approx(walk)


def test_empirical_continues_past_its_list_by_cyclic_replay():
    lists = [np.array([1, 3, 1, 2, 4])]
    acc = EmpiricalAcceptance.build(lists, np.array([9]), np.array([60]), 4, rng.stream_key(0, 0, 1))
    seq = acc.seq[: acc.length[0]]
    assert seq.sum() >= 59  # reaches the output length
    assert set(seq.tolist()) <= {1, 2, 3, 4}
    again = EmpiricalAcceptance.build(lists, np.array([9]), np.array([60]), 4, rng.stream_key(0, 0, 1))
    np.testing.assert_array_equal(seq, again.seq[: again.length[0]])


def scenario(acceptance: dict, k: int = 4, **trace) -> dict:
    return {"trace": {"path": str(REPO / "traces" / "azure_code_2023.parquet"), "max_requests": 40, **trace},
            "speculation": {"k": k, "acceptance": acceptance}, "scheduler": [{"name": "fcfs"}]}


def test_scenario_builds_every_kind():
    for acc in ({"kind": "beta", "mean": 0.6, "warmup_steps": 4.0, "ar_sigma": 0.05, "ar_phi": 0.5},
                {"kind": "empirical", "path": DATA, "dataset": "instructcoder", "method": "eagle"}):
        s = parse_scenario(scenario(acc))
        w = load_workload(s)
        a0, a1 = build_acceptance(s, w, 0), build_acceptance(s, w, 0)
        idx = np.arange(w.n)
        np.testing.assert_array_equal(a0.emitted(idx, idx % 5, idx), a1.emitted(idx, idx % 5, idx))


@pytest.mark.parametrize(("acc", "k", "key"), [
    ({"kind": "empirical", "path": DATA, "dataset": "gsm8k"}, 4, "speculation.acceptance.dataset"),
    ({"kind": "empirical", "path": DATA, "method": "medusa"}, 4, "speculation.acceptance.method"),
    ({"kind": "empirical", "path": DATA, "dataset": "cnn", "method": "eagle"}, 20, "speculation.k"),
    ({"kind": "empirical", "path": DATA, "mapping": "trace"}, 4, "speculation.acceptance.mapping"),
    ({"kind": "beta", "mean": 1.2}, 4, "speculation.acceptance.mean"),
    ({"kind": "gamma"}, 4, "speculation.acceptance.kind"),
])
def test_bad_acceptance_input_names_the_key(acc, k, key):
    with pytest.raises(LapsbenchError) as err:
        s = parse_scenario(scenario(acc, k))
        build_acceptance(s, load_workload(s), 0)
    assert str(err.value).startswith(key), str(err.value)


def test_cli_bad_dataset_exits_2_with_one_line(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(f'''
[trace]
path = "{REPO / "traces" / "azure_code_2023.parquet"}"
max_requests = 10
[speculation]
k = 4
acceptance = {{ kind = "empirical", path = "{DATA}", dataset = "nope" }}
[[scheduler]]
name = "fcfs"
[output]
dir = "{tmp_path / "out"}"
''')
    proc = lapsbench("run", str(toml), "--quiet")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "speculation.acceptance.dataset" in lines[0] and "sharegpt" in lines[0]
