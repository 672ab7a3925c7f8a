"""calibrate fit from a step log: recovery of a known ground truth (host overhead, batch × max-context and
max-context attention, short-prefill regime, mixed steps), step terms on top of forward measurements,
leave-one-out for small phases; the new pricing forms are bit-identical in numpy and numba, reach the batched
engines, and existing profiles price exactly as before."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_batching import FIELDS, random_case, run
from test_calibrate_fit import TRUE, _synthetic

from lapsbench.calibrate.fit import fit_profile
from lapsbench.calibrate.profile_file import STEP_LOG
from lapsbench.config.toml import read_toml
from lapsbench.engine.context import BatchConfig
from lapsbench.errors import LapsbenchError
from lapsbench.models.cost import CostModel, PhaseModel, StepModel, load_profile_file, sd_step_s
from lapsbench.models.pricing import pack_cost

from cli_helpers import lapsbench

REPO = Path(__file__).resolve().parent.parent
PROFILES = sorted((REPO / "profiles").glob("*.toml"))


# ------------------------------------------------------------------------------- synthetic engine, known truth

def truth_decode_ms(n, c, m):
    """A whole SD step at k = 4: host overhead + weights + per request + Σ context + max context (the
    longest member, at batch 1 the whole attention) + batch × max context (padded attention)."""
    return 8.15 + 0.06 * n + 1.2e-4 * c + 8e-4 * m + 1.0e-4 * n * m


def truth_prefill_ms(npf, t, pc):
    """Eager, launch-bound below 512 tokens; a compute-bound forward above."""
    return np.where(t < 512, 12.0 + 0.005 * t, 5.0 + 0.026 * t + 8e-7 * t * t / npf + 2e-6 * t * pc / npf)


MIXED_MS = -4.0  # a fused mixed step reads the weights once


def synthetic_log(n_steps: int, seed: int = 0, noise: float = 0.01, k: int = 4) -> pl.DataFrame:
    g = np.random.default_rng(seed)
    kind = g.choice(3, n_steps, p=[0.7, 0.2, 0.1])  # decode, prefill, mixed
    n = np.where(kind != 1, g.integers(1, 65, n_steps), 0)
    c, m = np.zeros(n_steps, np.int64), np.zeros(n_steps, np.int64)
    for i in np.flatnonzero(n):
        ctx = g.integers(10, 4000, n[i])
        c[i], m[i] = ctx.sum(), ctx.max()
    npf = np.where(kind != 0, g.integers(1, 4, n_steps), 0)
    t = np.where(npf > 0, np.maximum(npf, np.exp(g.uniform(np.log(16), np.log(4096), n_steps)).astype(int)), 0)
    pc = np.where((npf > 0) & (g.random(n_steps) < 0.3), g.integers(0, 4096, n_steps), 0)
    ms = np.where(n > 0, truth_decode_ms(n, c, m), 0.0) + np.where(npf > 0, truth_prefill_ms(np.maximum(npf, 1), t,
                                                                                               pc), 0.0)
    ms = (ms + np.where((n > 0) & (npf > 0), MIXED_MS, 0.0)) * np.exp(noise * g.standard_normal(n_steps))
    return pl.DataFrame({"scheduler": "fcfs", "replication": 0, "step": np.arange(n_steps),
                         "start_s": np.concatenate(([0.0], np.cumsum(ms[:-1]) / 1000)), "wall_ms": ms, "k": k,
                         "decode_requests": n, "context_tokens": c, "context_max": m, "prefill_requests": npf,
                         "prefill_tokens": t, "prefill_context_tokens": pc})


def _fit_steps(tmp_path: Path, log: pl.DataFrame, measured: Path | None = None) -> tuple[dict, Path]:
    """Steps alone (on an H200), or with synthetic forward measurements (an unknown GPU of 80 GB)."""
    steps = tmp_path / "steps.parquet"
    log.write_parquet(steps)
    out = tmp_path / "p.toml"
    gpu, memory = ("NVIDIA H200", None) if measured is None else (None, 80.0)
    fits, _ = fit_profile(measured, out, "llama2-7b", ["llama-68m"], None, gpu, memory, None, [], 0.25, 0, "test",
                          steps)
    return fits, out


def test_step_log_fit_recovers_ground_truth(tmp_path: Path) -> None:
    """1% noise: held-out MAPE per step phase near the noise (≤ 1.5%), worst ≤ 6%; noise-free prices of
    configurations like the logged ones (contexts 10..4000 per request) are within 3% of the truth, through
    sd_step_s."""
    fits, out = _fit_steps(tmp_path, synthetic_log(1000))
    for phase in ("decode", "prefill", "mixed"):
        st = fits[STEP_LOG][phase]
        assert st["validation"] == "held-out" and st["n_test"] > 20
        assert st["mape"] <= 0.015 and st["max_ape"] <= 0.06, (phase, st)
    assert "short512" in fits[STEP_LOG]["prefill"]["form"]  # the launch-bound regime is found where it is
    cost = load_profile_file(out)
    assert cost.step is not None and cost.step.k == 4 and cost.step.mixed_ms == pytest.approx(MIXED_MS, abs=0.3)
    for n, c, m in ((1, 3000, 3000), (1, 200, 200), (8, 16000, 3600), (32, 64000, 3900), (64, 128000, 3990)):
        got = float(sd_step_s(cost, 4, [n], [c], context_max=[m])[0]) * 1000
        assert got == pytest.approx(truth_decode_ms(n, c, m), rel=0.03), (n, c, m)
    for t in (64, 300, 511, 600, 2000, 4000):
        got = float(sd_step_s(cost, 4, [0], [0], [1], [t], [t * t], [0], [0])[0]) * 1000
        assert got == pytest.approx(float(truth_prefill_ms(1, t, 0)), rel=0.03), t
    got = float(sd_step_s(cost, 4, [4], [4000], [1], [1000], [10**6], [0], [0], context_max=[1500])[0]) * 1000
    assert got == pytest.approx(truth_decode_ms(4, 4000, 1500) + truth_prefill_ms(1, 1000, 0) + MIXED_MS, rel=0.03)
    # the attention terms the truth has are the ones found (batch 1 pays the whole max-context slope)
    coef = cost.target.coef
    assert coef.get("context_max", 0) > 4e-4 and coef.get("batch_context_max", 0) > 5e-5
    with pytest.raises(LapsbenchError, match="k = 4"):
        sd_step_s(cost, 2, [1], [100])
    with pytest.raises(LapsbenchError, match="k = 4"):
        pack_cost(cost, 2)


def test_step_log_with_several_k_alone_is_refused(tmp_path: Path) -> None:
    log = pl.concat([synthetic_log(100, 1, k=4), synthetic_log(100, 2, k=2).with_columns(pl.lit(1).alias(
        "replication"))])
    with pytest.raises(LapsbenchError, match=r"column k has values \[2, 4\]"):
        _fit_steps(tmp_path, log)
    assert not (tmp_path / "p.toml").exists()


def true_forward_cost(step: StepModel | None = None) -> CostModel:
    """The forward models of test_calibrate_fit's synthetic measurements (draft = 0.03 × target)."""
    def scaled(coefs: dict, f: float) -> PhaseModel:
        return PhaseModel(coef={k: v * f for k, v in coefs.items()})
    return CostModel("truth", target=scaled(TRUE["decode"], 1.0), target_prefill=scaled(TRUE["prefill"], 1.0),
                     draft=scaled(TRUE["decode"], 0.03), draft_prefill=scaled(TRUE["prefill"], 0.03), step=step)


def test_measured_plus_step_log_fits_step_terms(tmp_path: Path) -> None:
    """Forwards measured exactly; the engine's steps cost 5% more than their forwards plus 0.15 / 0.27 / 0.4 ms
    host overhead per decode / prefill / mixed step (0.5% noise): the fit finds the factor and overheads."""
    measured = tmp_path / "m.csv"
    _synthetic(noise=0.0).write_csv(measured)
    true = true_forward_cost(StepModel(sd_factor=1.05, decode_ms=0.15, prefill_ms=0.27, mixed_ms=0.4))
    log = synthetic_log(800, seed=5).drop("wall_ms")
    log = log.with_columns(pl.col("context_max").clip(upper_bound=pl.col("context_tokens")))
    from lapsbench.calibrate.step_fit import price_steps

    g = np.random.default_rng(9)
    ms = price_steps(true, log.with_columns(pl.lit(1.0).alias("wall_ms"))) * np.exp(0.005 * g.standard_normal(
        log.height))
    fits, out = _fit_steps(tmp_path, log.with_columns(pl.Series("wall_ms", ms)), measured)
    cost = load_profile_file(out)
    assert cost.step is not None and cost.step.k is None  # forward models: any k is priced
    assert cost.step.sd_factor == pytest.approx(1.05, abs=0.01)
    assert cost.step.decode_ms == pytest.approx(0.15, abs=0.08)
    assert cost.step.prefill_ms == pytest.approx(0.27, abs=0.15)
    for phase in ("decode", "prefill", "mixed"):
        assert fits[STEP_LOG][phase]["mape"] < 0.01, (phase, fits[STEP_LOG][phase])
    assert fits["llama2-7b"]["decode"]["mape"] < 1e-6  # the forward fits are still reported
    assert float(sd_step_s(cost, 2, [3], [900])[0]) > 0  # another k is priced


def test_small_phase_leave_one_out(tmp_path: Path) -> None:
    """8 prefill rows per model (as another tool's measurement may have): fitted on every row, error by LOO,
    said so; the CLI prints the note."""
    df = _synthetic(noise=0.01)
    keep = (pl.col("phase") != "prefill") | ((pl.col("batch") <= 2) & (pl.col("context") == 0))
    df = df.filter(keep)
    assert df.filter((pl.col("model") == "llama2-7b") & (pl.col("phase") == "prefill")).height == 8
    path = tmp_path / "m.csv"
    df.write_csv(path)
    out = tmp_path / "p.toml"
    fits, _ = fit_profile(path, out, "llama2-7b", ["llama-68m"], None, None, 80.0, None, [], 0.25, 0, "test")
    st = fits["llama2-7b"]["prefill"]
    assert st["validation"] == "leave-one-out" and st["n_test"] == 8 and st["n_train"] == 8
    assert 0 < st["mape"] < 0.05 and st["max_ape"] >= st["mape"]
    assert fits["llama2-7b"]["decode"]["validation"] == "held-out"
    assert load_profile_file(out).target_prefill is not None
    r = lapsbench("calibrate", "fit", str(path), "--out", str(tmp_path / "q.toml"), "--target", "llama2-7b", "--draft",
                  "llama-68m", "--gpu-memory-gb", "80")
    assert r.returncode == 0, r.stderr
    assert "leave-one-out" in r.stdout


# ------------------------------------------------------------------------------------------- pricing

def _hand_built() -> dict[str, CostModel]:
    mem = {"const": 6.0, "batch": 0.02, "context": 1e-4, "context_max": 6e-4, "batch_context_max": 1.5e-4}
    comp = {"const": 1.0, "tokens": 0.05, "batch_context_max": 2e-4, "context_max": 1e-4}
    prefill = PhaseModel(coef={"const": 4.0, "tokens": 0.02}, coef_compute={"tokens": 0.03, "tokens_sq": 1e-6},
                         form="pnorm", p=4.0, short_below=512.0, short={"const": 11.0, "tokens": 0.004})
    step = StepModel(sd_factor=1.04, decode_ms=0.15, prefill_ms=0.27, mixed_ms=-1.3, context=2e-5,
                     context_max=3e-4, batch_context_max=1e-5)
    return {
        "pnorm-attention+step": CostModel("a", target=PhaseModel(mem, comp, "pnorm", 8.0), target_prefill=prefill,
                                          draft=PhaseModel({"const": 0.2, "context_max": 2e-5,
                                                            "batch_context_max": 1e-6}),
                                          draft_prefill=PhaseModel({"const": 0.1, "tokens": 1e-4}), step=step),
        "max-attention": CostModel("b", target=PhaseModel(mem, comp, "max"), target_prefill=prefill,
                                   draft=PhaseModel({"const": 0.2})),
        "whole-step-k4": CostModel("c", target=PhaseModel(mem), target_prefill=prefill, draft=PhaseModel({}),
                                   step=StepModel(k=4, mixed_ms=-2.0)),
        "graph-padding": CostModel("d", target=PhaseModel(mem, comp, "pnorm", 4.0), target_prefill=prefill,
                                   draft=PhaseModel({"const": 0.2, "batch_context_max": 1e-6, "context_max": 1e-5}),
                                   step=StepModel(sd_factor=1.02, decode_ms=0.1, context_max=1e-4,
                                                  batch_context_max=2e-5, batch_sizes=(1, 2, 4, 8, 16, 24, 32),
                                                  span_multiple=128)),
    }


def test_graph_padding_prices_the_padded_shape() -> None:
    """batch_sizes / span_multiple: a step of 5 requests costs what 8 cost; a span of max context + k + 1 is
    rounded up to 128 (here: 300 + 5 → 384)."""
    cost = CostModel("pad", target=PhaseModel({"const": 1.0, "batch": 0.1, "batch_context_max": 1e-3}),
                     target_prefill=PhaseModel({"const": 1.0}), draft=PhaseModel({}),
                     step=StepModel(k=4, batch_sizes=(1, 2, 4, 8), span_multiple=128))
    ms = [float(sd_step_s(cost, 4, [n], [n * 300], context_max=[300])[0]) * 1000 for n in (5, 8, 9)]
    assert ms[0] == ms[1] == pytest.approx(1.0 + 0.8 + 1e-3 * 8 * 384)
    assert ms[2] == pytest.approx(1.0 + 0.9 + 1e-3 * 9 * 384)  # beyond the last size: unpadded
    assert float(sd_step_s(cost, 4, [0], [0])[0]) == 0.0


def padded_log(n_steps: int, seed: int = 3) -> pl.DataFrame:
    """Decode steps of an engine that runs batches of 2^j and spans in multiples of 128 (k = 4); no prefill."""
    g = np.random.default_rng(seed)
    log = synthetic_log(n_steps, seed).filter(pl.col("prefill_requests") == 0)
    n, m = log["decode_requests"].to_numpy(), log["context_max"].to_numpy()
    b = 2 ** np.ceil(np.log2(n)).astype(np.int64)
    span = (m + 5 + 127) // 128 * 128
    ms = (7.0 + 0.04 * b + 2.5e-4 * b * span) * np.exp(0.005 * g.standard_normal(n.size))
    return log.with_columns(pl.Series("wall_ms", ms))


def test_step_log_fit_with_graph_padding(tmp_path: Path) -> None:
    """Told the engine's padding, the fit follows the staircase (held-out MAPE near the 0.5% noise); without it,
    the same log is fitted clearly worse."""
    log = pl.concat([padded_log(500), synthetic_log(60, 8).filter(pl.col("decode_requests") == 0)])
    log = log.with_columns(pl.int_range(pl.len()).alias("step"),
                           (pl.col("wall_ms").cum_sum().shift(1, fill_value=0.0) / 1000).alias("start_s"))
    steps = tmp_path / "steps.csv"
    log.write_csv(steps)
    common = (None, "NVIDIA H200", None, None, [], 0.25, 0, "test", steps)
    fits, _ = fit_profile(None, tmp_path / "a.toml", "llama2-7b", ["llama-68m"], *common, (1, 2, 4, 8, 16, 32, 64),
                          128)
    plain, _ = fit_profile(None, tmp_path / "b.toml", "llama2-7b", ["llama-68m"], *common)
    assert fits[STEP_LOG]["decode"]["mape"] < 0.008, fits[STEP_LOG]["decode"]
    assert plain[STEP_LOG]["decode"]["mape"] > 2 * fits[STEP_LOG]["decode"]["mape"]
    cost = load_profile_file(tmp_path / "a.toml")
    assert cost.step.batch_sizes == (1, 2, 4, 8, 16, 32, 64) and cost.step.span_multiple == 128
    got = float(sd_step_s(cost, 4, [5], [5 * 1000], context_max=[1500])[0]) * 1000
    assert got == pytest.approx(7.0 + 0.04 * 8 + 2.5e-4 * 8 * 1536, rel=0.02)


def test_batched_engines_price_max_context() -> None:
    """The compiled loop and the step-by-step reference agree bit for bit with a profile that prices the longest
    member and has step terms, and that term changes the result."""
    cost = _hand_built()["pnorm-attention+step"]
    flat = CostModel("flat", target=PhaseModel({"const": 6.0, "batch": 0.02, "context": 1e-4}),
                     target_prefill=cost.target_prefill, draft=cost.draft, draft_prefill=cost.draft_prefill,
                     step=cost.step)
    case = random_case(4)
    config = BatchConfig(mode="continuous", max_batch=8, max_batch_tokens=128, kv_capacity_tokens=np.inf)
    fast, _ = run(case, "las", config, cost, reference=False)
    slow, _ = run(case, "las", config, cost, reference=True)
    for field in FIELDS:
        assert np.array_equal(getattr(fast, field), getattr(slow, field)), field
    other, _ = run(case, "las", config, flat, reference=False)
    assert not np.array_equal(other.finish_s, fast.finish_s)


# ------------------------------------------------------------------------------------ backward compatibility

def _old_costmodel() -> types.ModuleType:
    """lapsbench/models/cost.py as it was before step-level terms (main at 54ca72b), from git."""
    try:
        src = subprocess.run(["git", "show", "54ca72b:lapsbench/models/cost.py"], capture_output=True, text=True,
                             cwd=REPO, check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git history with commit 54ca72b not available")
    mod = types.ModuleType("old_costmodel")
    sys.modules[mod.__name__] = mod  # its dataclasses look their module up
    exec(compile(src, "old_costmodel.py", "exec"), mod.__dict__)  # noqa: S102 - our own file from our history
    return mod


def test_shipped_profiles_price_exactly_as_before() -> None:
    """Every shipped profile, every draft, k = 0, 1, 4, 7: sd_step_s (steps with prefill, decode only) and the
    batch-1 prefill (now priced through sd_step_s) equal the old code bit for bit."""
    old = _old_costmodel()
    g = np.random.default_rng(14)
    n = 300
    nd = g.integers(0, 129, n)
    nd[:30] = 0
    nd[30:60] = 1
    cd = g.integers(0, 8000, n) * np.maximum(nd, 1)
    npf = g.integers(0, 5, n)
    npf[::3] = 0
    pt = np.where(npf > 0, np.maximum(npf, g.integers(1, 8192, n)), 0)
    sq, pc = pt * pt // np.maximum(npf, 1), np.where(npf > 0, g.integers(0, 10_000, n), 0)
    tc = pt * pc // np.maximum(npf, 1)
    prompt = g.integers(1, 8192, 100)
    z, one = np.zeros(prompt.size, np.int64), np.ones(prompt.size, np.int64)
    for path in PROFILES:
        for draft in (None, "tinyllama-1.1b"):
            new_cost, old_cost = load_profile_file(path, draft), old.load_profile_file(path, draft)
            for k in (0, 1, 4, 7):
                assert np.array_equal(sd_step_s(new_cost, k, nd, cd, npf, pt, sq, tc, pc),
                                      old.sd_step_s(old_cost, k, nd, cd, npf, pt, sq, tc, pc)), (path.name, k)
                assert np.array_equal(sd_step_s(new_cost, k, nd, cd), old.sd_step_s(old_cost, k, nd, cd))
                assert np.array_equal(sd_step_s(new_cost, k, z, z, one, prompt, prompt * prompt, z, z),
                                      old_cost.prefill_s(one, prompt, prompt * prompt, z, z, with_draft=k > 0))


def test_a_phase_with_no_held_out_step_says_so(tmp_path: Path) -> None:
    """validation/h200-graphs/cb64/calib-cb64 (a real continuous-batching window) has one prefill-only step:
    the prefill model is still fitted (on the mixed steps too), but no error is claimed for that phase."""
    out = tmp_path / "p.toml"
    r = lapsbench("calibrate", "fit", "--steps", "validation/h200-graphs/cb64/calib-cb64/steps.parquet",
                  "--out", str(out), "--target", "llama3-8b", "--draft", "llama-68m",
                  "--batch-sizes", "1,2,4,8,16,32,64", "--span-multiple", "256")
    assert r.returncode == 0, r.stderr
    fit = read_toml(out, "profile")["fit"][STEP_LOG]
    assert fit["prefill"]["n_test"] == 0 and fit["prefill"]["validation"] == "none held out"
    assert fit["mixed"]["validation"] == "held-out" and 0 < fit["mixed"]["mape"] < 0.1
    row = next(line for line in r.stdout.splitlines() if "│prefill" in line.replace(" ", ""))
    assert "none held out" in row and "nan" not in row and "–" in row


def test_the_fit_table_cuts_no_number_in_a_narrow_terminal(tmp_path: Path, monkeypatch) -> None:
    """80 columns: too narrow for the table's longest words, so a line per row, each error whole."""
    import io

    from rich.console import Console

    import lapsbench.calibrate.cli as calibrate_cli

    screen = io.StringIO()
    monkeypatch.setattr(calibrate_cli, "_console", Console(file=screen, width=80, force_terminal=True,
                                                           color_system=None))
    r = lapsbench("calibrate", "fit", "--steps", "validation/h200-graphs/cb16/calib-cb16/steps.parquet",
                  "--out", str(tmp_path / "p.toml"), "--target", "llama3-8b", "--draft", "llama-68m",
                  "--batch-sizes", "1,2,4,8,16,32,64", "--span-multiple", "256")
    assert r.returncode == 0, r.stderr
    fit = read_toml(tmp_path / "p.toml", "profile")["fit"][STEP_LOG]
    text = " ".join(screen.getvalue().split())
    for phase in ("decode", "mixed"):
        assert f"MAPE {100 * fit[phase]['mape']:.2f}%, worst {100 * fit[phase]['max_ape']:.2f}%" in text
    assert "prefill: " in text and "(none held out); MAPE –, worst –" in text


def test_chunks_after_cached_tokens_are_priced_by_their_attention(tmp_path: Path) -> None:
    """A step-log prefill model charges cached tokens through chunk × cached (tokens_context), not by
    themselves: fitted on the H200 calibration window of docs/validation.md §0.9 (5 of its 1,287 steps prefill
    a chunk after cached tokens, at most 1,172 of them), it prices the validation window's steps that prefill
    chunks after ~3,100-3,700 cached tokens within 10% (with Σ cached as a feature of its own: 38-66% high)."""
    from lapsbench.calibrate.step_fit import STEP_PREFILL_FEATURES, price_steps
    from lapsbench.calibrate.steplog import read_steplog

    replays = REPO / "validation" / "h200-chunks" / "cb64"
    out = tmp_path / "p.toml"
    fit_profile(None, out, "llama3-8b", ["llama-68m"], None, "NVIDIA H200", None, None, [], 0.25, 0, "test",
                [replays / "calib-cb64" / "steps.parquet"], batch_sizes=(1, 2, 4, 8, 16, 32, 64), span_multiple=256)
    cost = load_profile_file(out)
    assert "context" not in STEP_PREFILL_FEATURES
    assert set(cost.target_prefill.coef) | set(cost.target_prefill.coef_compute) <= set(STEP_PREFILL_FEATURES)
    log = read_steplog(replays / "cb64-high" / "steps.parquet").filter(pl.col("prefill_context_tokens") > 3000)
    assert log.height >= 8
    ape = np.abs(price_steps(cost, log) / log["wall_ms"].to_numpy() - 1)
    assert ape.mean() <= 0.10, ape


# --------------------------------------------------------------------------- per-length prefill correction

OFFSET_MS = np.round(np.random.default_rng(11).uniform(-2.0, 2.0, 24), 2)  # per 64-token padded length


def bucketed_log(n_steps: int, seed: int = 0, noise: float = 0.005) -> pl.DataFrame:
    """An engine that pads prefill chunks to multiples of 64 tokens, each padded length OFFSET_MS off the
    smooth cost (1..3 chunks a step, of 129..1536 tokens), in mixed and prefill-only steps; prefill_chunks
    logged."""
    g = np.random.default_rng(seed)
    rows = []
    for _ in range(n_steps):
        n = 0 if g.random() < 0.5 else int(g.integers(1, 17))
        ctx = g.integers(10, 3000, n) if n else np.zeros(0, np.int64)
        chunks = g.integers(129, 24 * 64 + 1, int(g.integers(1, 4))) if g.random() < 0.8 or n == 0 else []
        chunks = [int(c) for c in chunks]
        tok = sum(chunks)
        ms = truth_decode_ms(n, int(ctx.sum()), int(ctx.max(initial=0))) if n else 0.0
        if chunks:
            ms += 5.0 + 0.026 * tok + 8e-7 * sum(c * c for c in chunks)
            ms += sum(OFFSET_MS[(c + 63) // 64 - 1] for c in chunks) + (MIXED_MS if n else 0.0)
        rows.append(dict(wall_ms=ms * float(np.exp(noise * g.standard_normal())), k=4, decode_requests=n,
                         context_tokens=int(ctx.sum()), context_max=int(ctx.max(initial=0)),
                         prefill_requests=len(chunks), prefill_tokens=tok, prefill_context_tokens=0,
                         prefill_tokens_sq=sum(c * c for c in chunks), prefill_tokens_context=0,
                         prefill_chunks=chunks))
    log = pl.DataFrame(rows, schema_overrides={"prefill_chunks": pl.List(pl.Int64)})
    return log.with_columns(pl.lit("fcfs").alias("scheduler"), pl.int_range(pl.len()).alias("step"),
                            (pl.col("wall_ms").cum_sum().shift(1, fill_value=0.0) / 1000).alias("start_s"))


def test_step_log_fit_learns_the_prefill_correction_per_padded_length(tmp_path: Path) -> None:
    """Told the engine pads chunks to 64 tokens (--prefill-bucket 64), the fit adds to its smooth prefill model a
    correction per padded length that follows the planted offsets, and prices held-out steps that prefill over
    twice as well as without it. The table is fitted on what the smooth model leaves, so it cannot undo that
    model's own misfit (here its forms are chosen under ±2 ms of offsets): held-out MAPE ~1%, not the 0.5%
    noise. A step of several chunks pays each one's entry, from the log's chunks."""
    steps = tmp_path / "steps.parquet"
    bucketed_log(1500).write_parquet(steps)
    common = (None, "NVIDIA H200", None, None, [], 0.25, 0, "test", steps)
    fits, _ = fit_profile(None, tmp_path / "a.toml", "llama2-7b", ["llama-68m"], *common, prefill_bucket=64)
    plain, _ = fit_profile(None, tmp_path / "b.toml", "llama2-7b", ["llama-68m"], *common)
    for phase in ("prefill", "mixed"):
        assert fits[STEP_LOG][phase]["mape"] < 0.015, fits[STEP_LOG]
        assert plain[STEP_LOG][phase]["mape"] > 2 * fits[STEP_LOG][phase]["mape"], plain[STEP_LOG]
        assert fits[STEP_LOG][phase]["form"].endswith("+ per 64 tokens")
    step = load_profile_file(tmp_path / "a.toml").step
    assert step.prefill_bucket_tokens == 64 and len(step.prefill_bucket_ms) == OFFSET_MS.size
    found = np.array(step.prefill_bucket_ms)[2:]  # chunks of 129 tokens and more
    assert np.corrcoef(found, OFFSET_MS[2:])[0, 1] > 0.9
    assert "prefill_bucket_ms" not in (tmp_path / "b.toml").read_text()


def test_prefill_bucket_needs_a_step_log(tmp_path: Path) -> None:
    measured = tmp_path / "m.csv"
    measured.write_text("x\n")
    for args, key in (([str(measured), "--prefill-bucket", "64"], "--prefill-bucket"),
                      (["--steps", str(tmp_path / "s.csv"), "--prefill-bucket", "-1"], "--prefill-bucket")):
        r = lapsbench("calibrate", "fit", *args, "--out", str(tmp_path / "p.toml"), "--target", "llama3-8b")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and key in r.stderr, r.stderr
        assert not (tmp_path / "p.toml").exists()


def test_h200_mixed_steps_with_the_per_length_correction(tmp_path: Path) -> None:
    """On the H200 calibration window of docs/validation.md §0.10 (continuous batching at max_batch 16, chunks
    logged): with the replay's 64-token prefill padding told, held-out mixed steps are priced within 3% MAPE
    and 10% worst; without it, not."""
    steps = REPO / "validation" / "h200-buckets" / "cb16" / "calib-cb16" / "steps.parquet"
    common = (None, "NVIDIA H200", None, None, [], 0.25, 0, "test", [steps], (1, 2, 4, 8, 16, 32, 64), 256)
    fits, _ = fit_profile(None, tmp_path / "a.toml", "llama3-8b", ["llama-68m"], *common, prefill_bucket=64)
    plain, _ = fit_profile(None, tmp_path / "b.toml", "llama3-8b", ["llama-68m"], *common)
    mixed, smooth = fits[STEP_LOG]["mixed"], plain[STEP_LOG]["mixed"]
    assert mixed["mape"] <= 0.03 and mixed["max_ape"] <= 0.10, mixed
    assert smooth["max_ape"] > 0.10 and smooth["mape"] > 1.5 * mixed["mape"], smooth


def test_measured_plus_step_log_fits_the_per_length_correction(tmp_path: Path) -> None:
    """Forwards measured exactly, and a step log whose prefills (one per step) cost a planted offset per 64-token
    padded length: with --prefill-bucket 64 the [step] terms and the table are fitted on top of the forward
    models, the table follows the offsets, and held-out steps that prefill are priced over 3x better than without
    it (153 prefills over 64 padded lengths: many seen once or never, which the table leaves at 0)."""
    measured = tmp_path / "m.csv"
    _synthetic(noise=0.0).write_csv(measured)
    table = tuple(float(x) for x in np.round(np.random.default_rng(4).uniform(-2.0, 2.0, 64), 2))
    true = true_forward_cost(StepModel(sd_factor=1.05, decode_ms=0.15, prefill_ms=0.27, mixed_ms=0.4,
                                       prefill_bucket_tokens=64, prefill_bucket_ms=table))
    log = synthetic_log(1500, seed=6).drop("wall_ms").filter(pl.col("prefill_requests") <= 1)
    log = log.with_columns(pl.col("context_max").clip(upper_bound=pl.col("context_tokens")))
    from lapsbench.calibrate.step_fit import price_steps

    ms = price_steps(true, log.with_columns(pl.lit(1.0).alias("wall_ms"))) * np.exp(
        0.005 * np.random.default_rng(9).standard_normal(log.height))
    steps = tmp_path / "steps.parquet"
    log.with_columns(pl.Series("wall_ms", ms)).write_parquet(steps)
    common = ("llama2-7b", ["llama-68m"], None, None, 80.0, None, [], 0.25, 0, "test", steps)
    fits, _ = fit_profile(measured, tmp_path / "a.toml", *common, prefill_bucket=64)
    plain, _ = fit_profile(measured, tmp_path / "b.toml", *common)
    for phase in ("prefill", "mixed"):
        assert fits[STEP_LOG][phase]["mape"] < 0.02, fits[STEP_LOG][phase]
        assert plain[STEP_LOG][phase]["mape"] > 3 * fits[STEP_LOG][phase]["mape"], plain[STEP_LOG][phase]
        assert fits[STEP_LOG][phase]["form"].endswith("+ per 64 tokens")
    assert not fits[STEP_LOG]["decode"]["form"].endswith("tokens")
    step = load_profile_file(tmp_path / "a.toml").step
    found = np.array(step.prefill_bucket_ms)
    tok = log.filter(pl.col("prefill_requests") == 1)["prefill_tokens"].to_numpy()
    often = np.flatnonzero(np.bincount((tok + 63) // 64 - 1, minlength=found.size)[: found.size] >= 3)
    assert often.size >= 8
    assert np.corrcoef(found[often], np.array(table)[often])[0, 1] > 0.9, (found[often], np.array(table)[often])
