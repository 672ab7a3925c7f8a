"""lapsbench.models.pricing: the one step pricing — hand-computed steps, mixed K per request (issue #18),
the fixed-K case bit for bit, and a CostPack usable from compiled code and other processes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numba
import numpy as np
import pytest

from lapsbench.errors import LapsbenchError
from lapsbench.models.cost import CostModel, PhaseModel, StepModel, fixed_profile, load_profile_file
from lapsbench.models.pricing import mixed_step_time_s, pack_cost, step_time_s, step_times_s

REPO = Path(__file__).resolve().parent.parent
PROFILES = sorted((REPO / "profiles").glob("*.toml"))
# verify: 1 + 0.1 / token + 0.001 / cached token (ms); draft forward: 0.5 + 0.2 / request + 1e-4 / cached token
LINEAR = CostModel("hand", target=PhaseModel({"const": 1.0, "tokens": 0.1, "context": 0.001}),
                   target_prefill=PhaseModel({"const": 2.0, "tokens": 0.01}),
                   draft=PhaseModel({"const": 0.5, "batch": 0.2, "context": 1e-4}))


def mixed(cost, k, ks, contexts, n_prefill=0, tokens=0):
    ks, contexts = np.asarray(ks, np.int64), np.asarray(contexts, np.int64)
    return mixed_step_time_s(pack_cost(cost, k), ks, contexts, ks.size, n_prefill, tokens, tokens * tokens, 0, 0,
                             0.0)


def test_mixed_k_by_hand() -> None:
    """K = 3, 0, 1 at contexts 100, 200, 300: the verify forward checks 4 + 1 + 2 = 7 tokens over 600 cached;
    draft forward 0 runs requests 0 and 2 (400 cached), forwards 1 and 2 request 0 alone (101, 102 cached)."""
    verify = 1.0 + 0.1 * 7 + 0.001 * 600
    drafts = (0.5 + 0.2 * 2 + 1e-4 * 400) + (0.5 + 0.2 + 1e-4 * 101) + (0.5 + 0.2 + 1e-4 * 102)
    assert mixed(LINEAR, 3, [3, 0, 1], [100, 200, 300]) == pytest.approx((verify + drafts) / 1000, rel=1e-14)
    # K = 0 everywhere: plain decoding, no draft forward at all
    assert mixed(LINEAR, 3, [0, 0], [100, 200]) == pytest.approx((1.0 + 0.1 * 2 + 0.001 * 300) / 1000, rel=1e-14)
    # with a prefill in the step: its forward is added (the draft prefill too, when the profile has one)
    got = mixed(LINEAR, 3, [1], [50], n_prefill=1, tokens=100)
    want = (1.0 + 0.1 * 2 + 0.001 * 50) + (0.5 + 0.2 + 1e-4 * 50) + (2.0 + 0.01 * 100)
    assert got == pytest.approx(want / 1000, rel=1e-14)


def test_mixed_k_fixed_profile() -> None:
    """The fixed profile: step_s plus max K_i draft forwards when the step decodes."""
    cost = fixed_profile(0.02, draft_step_s=0.001, prefill_s_per_token=1e-5)
    assert mixed(cost, 4, [2, 3, 0], [10, 20, 30]) == 0.02 + 3 * 0.001 + 0.0
    assert mixed(cost, 4, [0, 0], [10, 20]) == 0.02 + 0.0 + 0.0
    assert mixed(cost, 4, [], [], n_prefill=1, tokens=100) == 0.02 + 0.0 + 1e-5 * 100


PADDED = CostModel("pad", target=PhaseModel({"const": 1.0, "batch": 0.1, "batch_context_max": 1e-3},
                                            {"const": 0.2, "tokens": 0.05}, "pnorm", 4.0),
                   target_prefill=PhaseModel({"const": 1.0}),
                   draft=PhaseModel({"const": 0.2, "batch_context_max": 1e-6, "context_max": 1e-5}),
                   step=StepModel(sd_factor=1.02, decode_ms=0.1, context_max=1e-4, batch_context_max=2e-5,
                                  batch_sizes=(1, 2, 4, 8, 16, 24, 32), span_multiple=128))


WIDE = CostModel("wide", target=PhaseModel({"const": 5.0, "tokens": 0.01, "context": 1e-4}, wide_from=32.0,
                                           wide={"const": 6.0, "batch": 0.02, "context": 2e-4, "context_max": 1e-3}),
                 target_prefill=PhaseModel({"const": 2.0, "tokens": 0.01}),
                 draft=PhaseModel({"const": 0.2, "batch": 0.001, "context": 2e-6}, wide_from=32.0,
                                  wide={"const": 0.3, "context": 4e-6, "context_max": 5e-5}))


@pytest.mark.parametrize("cost", [LINEAR, PADDED, WIDE, fixed_profile(0.02, 0.0015, 3e-6),
                                  *(load_profile_file(p) for p in PROFILES)], ids=lambda c: c.name)
def test_same_k_everywhere_is_step_time_s(cost: CostModel) -> None:
    """Every request drafting the pack's k: mixed_step_time_s is step_time_s bit for bit."""
    g = np.random.default_rng(3)
    for k in (0, 1, 4, 7):
        pack = pack_cost(cost, k)
        for _ in range(60):
            n = int(g.integers(0, 40))
            contexts = g.integers(0, 5000, n)
            npf = int(g.integers(0, 3))
            tok = int(g.integers(npf, 3000)) if npf else 0
            want = step_time_s(pack, n, int(contexts.sum()), int(contexts.max(initial=0)), npf, tok, tok * tok, 0, 0,
                               0.0)
            got = mixed_step_time_s(pack, np.full(n, k, np.int64), contexts, n, npf, tok, tok * tok, 0, 0, 0.0)
            assert got == want, (cost.name, k, n)


def test_graph_padding_prices_the_padded_shape() -> None:
    """batch_sizes / span_multiple: 5 decoding requests cost what 8 cost; the span is max context + k + 1
    rounded up to 128."""
    pack = pack_cost(PADDED, 4)
    assert step_time_s(pack, 5, 5000, 300, 0, 0, 0, 0, 0, 0.0) == step_time_s(pack, 8, 5000, 300, 0, 0, 0, 0, 0, 0.0)
    assert step_time_s(pack, 5, 5000, 300, 0, 0, 0, 0, 0, 0.0) == step_time_s(pack, 5, 5000, 379, 0, 0, 0, 0, 0, 0.0)
    assert step_time_s(pack, 5, 5000, 300, 0, 0, 0, 0, 0, 0.0) != step_time_s(pack, 5, 5000, 380, 0, 0, 0, 0, 0, 0.0)


def test_vectorised_and_compiled_callers_agree() -> None:
    """step_times_s (arrays, for Python callers) and a call from other compiled code give the same floats."""
    cost = load_profile_file(PROFILES[0])
    pack = pack_cost(cost, 3)
    n = np.arange(1, 40, dtype=np.int64)
    c = n * 1000

    @numba.njit
    def each(pack, n, c, out):
        for i in range(n.size):
            none = np.int64(0)  # literal arguments would compile another specialisation (~20 s)
            out[i] = step_time_s(pack, n[i], c[i], c[i] // n[i], np.int64(1), np.int64(16), np.int64(256), none, none,
                                 0.0)

    out = np.empty(n.size)
    each(pack, n, c, out)
    assert np.array_equal(out, step_times_s(cost, 3, n, c, 1, 16, 256, 0, 0, context_max=c // n))
    again = pickle.loads(pickle.dumps(pack))  # a pack holds no addresses: it goes to sweep workers as is
    assert np.array_equal(step_times_s(again, 3, n, c, context_max=c // n), step_times_s(pack, 3, n, c,
                                                                                         context_max=c // n))


def test_errors() -> None:
    no_draft = CostModel("nodraft", target=PhaseModel({"const": 1.0}), target_prefill=PhaseModel({"const": 1.0}))
    with pytest.raises(LapsbenchError, match="needs a draft model"):
        pack_cost(no_draft, 2)
    assert step_times_s(no_draft, 0, [3], [10])[0] == 1.0 / 1000
    whole = CostModel("whole", target=PhaseModel({"const": 1.0}), target_prefill=PhaseModel({"const": 1.0}),
                      draft=PhaseModel({}), step=StepModel(k=4))
    with pytest.raises(LapsbenchError, match="k = 4"):
        pack_cost(whole, 2)


@pytest.mark.parametrize("n", [1, 8, 31, 32, 40])
def test_wide_batch_regime_by_hand(n: int) -> None:
    """A forward over at least `wide_from` requests costs the linear `wide` part: the compiled step price of
    n requests at context 1000 drafting k = 2 is the numpy forms' verify + two drafts, and from 32 requests
    on it is the wide coefficients by hand."""
    k, c = 2, 1000.0
    verify = float(WIDE.verify_s(n, n * (k + 1), n * c, c))  # the numpy forms, every request at context c
    drafts = sum(float(WIDE.draft_s(n, n * (c + f), c + f)) for f in range(k))
    got = step_time_s(pack_cost(WIDE, k), n, int(n * c), int(c), 0, 0, 0, 0, 0, 0.0)
    assert got == pytest.approx(verify + drafts, rel=1e-12)
    if n >= 32:
        by_hand = (6.0 + 0.02 * n + 2e-4 * n * c + 1e-3 * c) / 1000
        by_hand += sum(0.3 + 4e-6 * n * (c + f) + 5e-5 * (c + f) for f in range(k)) / 1000
        assert got == pytest.approx(by_hand, rel=1e-12)
    else:
        assert got == pytest.approx((5.0 + 0.01 * n * (k + 1) + 1e-4 * n * c) / 1000
                                    + sum(0.2 + 0.001 * n + 2e-6 * n * (c + f) for f in range(k)) / 1000, rel=1e-12)


TABLE = CostModel("table", target=PhaseModel({"const": 1.0}), target_prefill=PhaseModel({"const": 2.0, "tokens": 0.01}),
                  step=StepModel(prefill_bucket_tokens=64, prefill_bucket_ms=(1.0, -2.0, 0.0, 3.5)))


def test_prefill_bucket_table_by_hand() -> None:
    """[step] prefill_bucket_ms: entry i is added for each chunk of 64·i + 1 … 64·(i + 1) tokens, nothing past the
    table or for no chunk; a step's price is the smooth one plus the Σ of its chunks' entries; the numpy lookup
    is the compiled one, and a step of one prefill needs no Σ passed."""
    from lapsbench.models.pricing import bucket_ms_of_chunks, chunk_bucket_ms

    pack = pack_cost(TABLE, 0)
    chunks = [0, 1, 64, 65, 128, 129, 192, 193, 256, 257, 10_000]
    want = [0.0, 1.0, 1.0, -2.0, -2.0, 0.0, 0.0, 3.5, 3.5, 0.0, 0.0]
    assert [chunk_bucket_ms(pack, np.int64(c)) for c in chunks] == want
    assert bucket_ms_of_chunks(pack.bucket_tokens, pack.bucket_ms, np.array(chunks)).tolist() == want
    smooth = pack_cost(CostModel("smooth", target=TABLE.target, target_prefill=TABLE.target_prefill), 0)
    none = np.int64(0)
    for chunk_a, chunk_b in ((30, 100), (200, 300), (64, 65)):
        tok = np.int64(chunk_a + chunk_b)
        sq = np.int64(chunk_a * chunk_a + chunk_b * chunk_b)
        extra = chunk_bucket_ms(pack, np.int64(chunk_a)) + chunk_bucket_ms(pack, np.int64(chunk_b))
        got = step_time_s(pack, none, none, none, np.int64(2), tok, sq, none, none, extra)
        base = step_time_s(smooth, none, none, none, np.int64(2), tok, sq, none, none, 0.0)
        assert got == pytest.approx(base + extra / 1000, rel=1e-12)
        assert got == pytest.approx((2.0 + 0.01 * float(tok) + extra) / 1000, rel=1e-12)
    one = step_times_s(TABLE, 0, [0, 0, 0], [0, 0, 0], [1, 1, 1], [50, 100, 250], [2500, 10_000, 62_500], [0] * 3,
                       [0] * 3)
    np.testing.assert_allclose(one, np.array([2.5 + 1.0, 3.0 - 2.0, 4.5 + 3.5]) / 1000, rtol=1e-12)


def test_prefill_bucket_table_is_read_and_checked(tmp_path: Path) -> None:
    """A profile's table reads back as written; a table without its chunk length, or with a non-number, is one
    line naming the key."""
    base = PROFILES[0].read_text()
    if "[step]" in base:
        pytest.skip("the first shipped profile has a [step] table already")
    good = tmp_path / "good.toml"
    good.write_text(base + "\n[step]\nprefill_bucket_tokens = 64\nprefill_bucket_ms = [0.5, -1.0]\n")
    step = load_profile_file(good).step
    assert step is not None and step.prefill_bucket_tokens == 64 and step.prefill_bucket_ms == (0.5, -1.0)
    for body, key in (("prefill_bucket_ms = [0.5]", "prefill_bucket_tokens"),
                      ("prefill_bucket_tokens = 64\nprefill_bucket_ms = [0.5, \"x\"]", "prefill_bucket_ms"),
                      ("prefill_bucket_tokens = -64\nprefill_bucket_ms = [0.5]", "prefill_bucket_tokens")):
        bad = tmp_path / "bad.toml"
        bad.write_text(base + f"\n[step]\n{body}\n")
        with pytest.raises(LapsbenchError) as err:
            load_profile_file(bad)
        assert f"step.{key}" in str(err.value) and "\n" not in str(err.value), str(err.value)
