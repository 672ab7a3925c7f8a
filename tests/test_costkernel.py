"""lapsbench.costkernel: the compiled one-step pricing is bit-for-bit `costmodel.sd_step_s` on length-1 arrays."""

from __future__ import annotations

import pickle
import zlib
from dataclasses import replace
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lapsbench import costkernel as ck
from lapsbench.costmodel import CostModel, PhaseModel, fixed_profile, load_profile_file, sd_step_s
from lapsbench.errors import LapsbenchError

REPO = Path(__file__).resolve().parent.parent
PROFILES = sorted((REPO / "profiles").glob("*.toml"))
KS = (0, 1, 4, 7)


def seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def draw_cases(seed: int, n: int) -> np.ndarray:
    """Rows (n_decode, context_decode, n_prefill, prefill_tokens, tokens_sq, tokens_context, prefill_context),
    int64, with the edges (no decode, no prefill, batch 1, empty context) over-represented."""
    g = np.random.default_rng(seed)
    n_decode = g.integers(0, 257, n)
    n_decode[g.random(n) < 0.1] = 0
    n_decode[g.random(n) < 0.05] = 1
    context = g.integers(0, 2_000_001, n)
    context[g.random(n) < 0.05] = 0
    n_prefill = g.integers(0, 9, n)
    n_prefill[g.random(n) < 0.3] = 0
    tokens = np.where(n_prefill > 0, g.integers(1, 8193, n), 0)
    tokens = np.maximum(tokens, n_prefill)
    # Σq² between (Σq)²/n and (Σq)²; Σq·c with a prefix context of up to 100k tokens per request.
    lo = tokens**2 // np.maximum(n_prefill, 1)
    tokens_sq = lo + (g.random(n) * (tokens**2 - lo + 1)).astype(np.int64)
    prefill_context = np.where(n_prefill > 0, g.integers(0, 100_001, n) * n_prefill, 0)
    prefill_context[g.random(n) < 0.3] = 0
    tokens_context = (g.random(n) * (tokens * prefill_context + 1)).astype(np.int64)
    return np.stack([n_decode, context, n_prefill, tokens, tokens_sq, tokens_context, prefill_context], axis=1)


def reference(cost: CostModel, k: int, row) -> tuple[float, float]:
    nd, cd, npf, pt, sq, tc, pc = (int(v) for v in row)
    step = float(sd_step_s(cost, k, [nd], [cd], [npf], [pt], [sq], [tc], [pc])[0])
    decode = float(sd_step_s(cost, k, [nd], [cd])[0])
    return step, decode


def compiled(packed, row) -> tuple[float, float]:
    nd, cd, npf, pt, sq, tc, pc = (int(v) for v in row)
    return ck.step_time_s(packed, nd, cd, npf, pt, sq, tc, pc), ck.decode_step_time_s(packed, nd, cd)


def assert_bit_identical(cost: CostModel, k: int, cases: np.ndarray) -> np.ndarray:
    packed = ck.pack_cost(cost, k)
    got = np.array([compiled(packed, row) for row in cases])
    want = np.array([reference(cost, k, row) for row in cases])
    bad = np.flatnonzero((got != want).any(axis=1))
    assert bad.size == 0, (f"{cost.name} k={k}: {bad.size}/{len(cases)} differ, first {cases[bad[0]].tolist()}: "
                           f"kernel {got[bad[0]].tolist()} vs sd_step_s {want[bad[0]].tolist()}")
    return got


# ------------------------------------------------------------------------------------------------ fixed profile

FIXED = [fixed_profile(0.02), fixed_profile(0.025, draft_step_s=0.0015),
         fixed_profile(0.02, prefill_s_per_token=3.5e-6), fixed_profile(0.031, 0.0021, 1.7e-5)]


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("cost", FIXED, ids=lambda c: f"fixed-{c.fixed_step_s}-{c.fixed_draft_step_s}-"
                                                      f"{c.fixed_prefill_s_per_token}")
def test_fixed_profile(cost, k):
    edges = np.array([
        [0, 0, 0, 0, 0, 0, 0],        # idle
        [0, 0, 1, 512, 512**2, 0, 0],  # prefill only
        [0, 5000, 3, 900, 300000, 0, 0],
        [1, 0, 0, 0, 0, 0, 0],        # decode only
        [7, 12345, 0, 0, 0, 0, 0],
        [4, 999, 2, 64, 2048, 640, 10],  # mixed
    ])
    assert_bit_identical(cost, k, np.concatenate([edges, draw_cases(100 + k, 60)]))


def test_fixed_profile_busy_rules():
    """The fixed profile's two signatures differ: without prefill arguments a step is busy only if it decodes."""
    packed = ck.pack_cost(fixed_profile(0.02, 0.001, 1e-5), 3)
    assert ck.decode_step_time_s(packed, 0, 100) == 0.0
    assert ck.step_time_s(packed, 0, 100, 2, 100, 5000, 0, 0) == 0.02 + 0.0 + 1e-5 * 100
    assert ck.step_time_s(packed, 2, 100, 0, 0, 0, 0, 0) == ck.decode_step_time_s(packed, 2, 100) == 0.02 + 3 * 0.001


# ---------------------------------------------------------------------------------------------- fitted profiles

def test_shipped_profiles_cover_the_forms():
    forms = {m.form for p in PROFILES for m in _phases(load_profile_file(p))}
    assert PROFILES and "pnorm" in forms and "linear" in forms  # "max" is covered by the hand-built models below


def _phases(cost: CostModel) -> list[PhaseModel]:
    return [m for m in (cost.target, cost.target_prefill, cost.draft, cost.draft_prefill) if m is not None]


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_shipped_profile(path, k):
    got = assert_bit_identical(load_profile_file(path), k, draw_cases(seed(path.stem, k), 160))
    assert np.unique(got[:, 0]).size > 120  # not a constant


def test_other_draft_model():
    """The tinyllama draft of the h200 profile is itself pnorm (decode) — a pnorm draft forward."""
    cost = load_profile_file(REPO / "profiles" / "h200-llama2-7b.toml", draft="tinyllama-1.1b")
    assert cost.draft.form == "pnorm"
    for k in (1, 4):
        assert_bit_identical(cost, k, draw_cases(7 + k, 100))


@pytest.mark.parametrize("k", [8, 9, 16, 23, 129, 300])
def test_many_draft_forwards_sum_like_numpy(k):
    """sum(axis=0) of the k draft times is numpy's pairwise sum, not left to right, from 8 terms up."""
    cost = load_profile_file(REPO / "profiles" / "h100-llama2-13b.toml")
    assert_bit_identical(cost, k, draw_cases(k, 40 if k < 100 else 10))


# ----------------------------------------------------------------------------------------- hand-built models

MEM = {"const": 6.5, "batch": 0.021, "context": 1.5e-4}
COMP = {"tokens": 0.026, "const": 2.4, "tokens_sq": 8.4e-7, "context": 1.9e-4, "tokens_context": 1.8e-6,
        "batch": 0.009}
DRAFT = {"tokens_context": 1.4e-6, "const": 0.16, "batch": 1.7e-4, "tokens": 1.7e-4, "context": 1.4e-6,
         "tokens_sq": 1.7e-4}
PREFILL = {"const": 6.9, "context": 5.9e-5, "tokens": 0.0261, "tokens_sq": 8.4e-7, "tokens_context": 1.86e-6}
# Negative parts exercise the clamps at 0 of the pnorm form and the max form's choice.
NEG = {"const": -3.0, "batch": 0.01, "tokens": -1e-3, "context": 2e-5}


def _model(form: str, coef: dict, compute: dict | None = None, p: float = 0.0) -> PhaseModel:
    return PhaseModel(coef=dict(coef), coef_compute=dict(compute or {}), form=form, p=p)


HAND_BUILT = {
    "linear": CostModel("linear", target=_model("linear", MEM), target_prefill=_model("linear", PREFILL),
                        draft=_model("linear", DRAFT), draft_prefill=_model("linear", DRAFT)),
    "max": CostModel("max", target=_model("max", MEM, COMP), target_prefill=_model("max", NEG, PREFILL),
                     draft=_model("max", NEG, DRAFT), draft_prefill=_model("max", DRAFT, NEG)),
    **{f"pnorm{p}": CostModel(f"pnorm{p}", target=_model("pnorm", MEM, COMP, p),
                              target_prefill=_model("pnorm", NEG, PREFILL, p),
                              draft=_model("pnorm", DRAFT, NEG, p), draft_prefill=_model("pnorm", NEG, NEG, p))
       for p in (1.0, 1.5, 2.0, 3.0, 4.0, 8.0)},
    "mixed-no-draft-prefill": CostModel("mixed", target=_model("pnorm", COMP, MEM, 4.0),
                                        target_prefill=_model("max", PREFILL, MEM), draft=_model("linear", NEG)),
    "empty-coefficients": CostModel("empty", target=_model("pnorm", {}, {"const": 1.0}, 2.0),
                                    target_prefill=_model("linear", {}), draft=_model("max", {}, {})),
}


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("name", list(HAND_BUILT))
def test_hand_built_forms(name, k):
    assert_bit_identical(HAND_BUILT[name], k, draw_cases(seed(name, k), 40))


def test_coefficient_order_matters_and_is_kept():
    """Floating-point addition is not associative: the port adds terms in the dict's insertion order."""
    cases = draw_cases(3, 150)
    forward = CostModel("fwd", target=_model("linear", COMP), target_prefill=_model("linear", PREFILL))
    backward = CostModel("bwd", target=_model("linear", dict(reversed(COMP.items()))),
                         target_prefill=_model("linear", dict(reversed(PREFILL.items()))))
    a = assert_bit_identical(forward, 0, cases)
    b = assert_bit_identical(backward, 0, cases)
    assert (a != b).any()


# ----------------------------------------------------------------------------------- the tests can fail at all

def test_perturbed_coefficient_is_detected():
    """Nudging a coefficient by 2**-30 (relative: pytest.approx would not see it) changes the result for some
    case, so an unexact port fails the == comparisons; and the port stays exact for every nudged model. (A
    nudge can vanish in rounding, e.g. in the part a p = 8 norm all but ignores; most must not.)"""
    cost = load_profile_file(REPO / "profiles" / "h100-llama2-13b.toml")
    cases = draw_cases(11, 25)
    base = np.array([compiled(ck.pack_cost(cost, 4), row) for row in cases])
    detected = []
    for field in ("target", "target_prefill", "draft", "draft_prefill"):
        model = getattr(cost, field)
        for part in ("coef", "coef_compute"):
            for name in getattr(model, part):
                coefs = dict(getattr(model, part))
                coefs[name] = coefs[name] * (1 + 2.0**-30)
                nudged = replace(cost, **{field: replace(model, **{part: coefs})})
                got = assert_bit_identical(nudged, 4, cases)
                detected.append((got != base).any())
    assert len(detected) >= 10 and sum(detected) >= len(detected) - 3, detected


def test_pow_is_numpys():
    """numpy's float64 power is SVML on AVX-512 machines, and libm pow (numba's `**`) differs from it in the last
    bit for a few percent of inputs; the kernel calls numpy's own loop, so `x ** p` agrees with numpy's."""
    assert ck.NUMPY_POW_LOOP
    x = np.random.default_rng(0).random(3000)
    for e in (8.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5, 1 / 3, 0.25, 0.125):
        want = [(np.array([v]) ** e)[0] for v in x]
        got = [ck._pow(v, e) for v in x]
        assert got == want, e


def test_packed_cost_pickles():
    """A packed cost holds no addresses: it can go to another process (sweeps) and prices the same."""
    packed = ck.pack_cost(load_profile_file(PROFILES[0]), 4)
    again = pickle.loads(pickle.dumps(packed))
    for row in draw_cases(1, 30):
        assert compiled(again, row) == compiled(packed, row)


# -------------------------------------------------------------------------------------------------------- API

def test_packed_types_are_fixed_and_njit_callable():
    costs = [load_profile_file(p) for p in PROFILES] + FIXED + list(HAND_BUILT.values())
    packs = [ck.pack_cost(c, k) for c in costs for k in (0, 5)]
    assert len({numba.typeof(p) for p in packs}) == 1
    for p in packs:
        assert isinstance(p, tuple) and all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in p)
        assert all(a.dtype in (np.float64, np.int64) for a in p)

    @numba.njit
    def total(packed, n_decode, context):
        s = 0.0
        for i in range(n_decode.size):
            s += ck.step_time_s(packed, n_decode[i], context[i], 1, 16, 256, 0, 0) + \
                ck.decode_step_time_s(packed, n_decode[i], context[i])
        return s

    n_decode = np.arange(1, 40, dtype=np.int64)
    context = n_decode * 1000
    for cost in (costs[0], FIXED[-1]):
        packed = ck.pack_cost(cost, 3)
        want = 0.0
        for n, c in zip(n_decode, context, strict=True):
            want += ck.step_time_s(packed, int(n), int(c), 1, 16, 256, 0, 0) + ck.decode_step_time_s(packed, int(n),
                                                                                                    int(c))
        assert total(packed, n_decode, context) == want


def test_errors_match_sd_step_s():
    no_draft = CostModel("nodraft", target=_model("linear", MEM), target_prefill=_model("linear", PREFILL))
    with pytest.raises(LapsbenchError, match="needs a draft model"):
        sd_step_s(no_draft, 2, [1], [10])
    with pytest.raises(LapsbenchError, match="needs a draft model"):
        ck.pack_cost(no_draft, 2)
    assert ck.decode_step_time_s(ck.pack_cost(no_draft, 0), 3, 10) == float(sd_step_s(no_draft, 0, [3], [10])[0])


@settings(max_examples=100, deadline=None)
@given(profile=st.sampled_from(PROFILES), k=st.sampled_from(KS),
       n_decode=st.integers(0, 512), context=st.integers(0, 4_000_000), n_prefill=st.integers(0, 16),
       tokens=st.integers(0, 16384), sq_frac=st.floats(0, 1), prefill_context=st.integers(0, 1_000_000))
def test_hypothesis(profile, k, n_decode, context, n_prefill, tokens, sq_frac, prefill_context):
    cost = _loaded(profile)
    sq = tokens + int(sq_frac * (tokens * tokens - tokens))
    row = (n_decode, context, n_prefill, tokens, sq, tokens * prefill_context, prefill_context)
    assert compiled(ck.pack_cost(cost, k), row) == reference(cost, k, row)


_CACHE: dict[Path, CostModel] = {}


def _loaded(path: Path) -> CostModel:
    if path not in _CACHE:
        _CACHE[path] = load_profile_file(path)
    return _CACHE[path]
