"""calibrate fit/check: coefficient recovery, foreign-tool input, error reporting, bad input, shipped profiles."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lapsbench.calibrate.fit import check_profile, fit_profile
from lapsbench.calibrate.forward import features
from lapsbench.calibrate.models import MODELS
from lapsbench.calibrate.profile_file import kv_capacity_tokens
from lapsbench.config.toml import loads as toml_loads
from lapsbench.errors import LapsbenchError
from lapsbench.models.cost import FEATURES, load_profile_file

from cli_helpers import lapsbench

ROOT = Path(__file__).resolve().parents[1]
MAPE_LIMIT = 0.05  # every shipped forward-pass profile, every model (target and drafts) and phase, held out
WORST_LIMIT = 0.15


def _grid(model: str, phase: str) -> pl.DataFrame:
    if phase == "decode":
        rows = [(b, q, c) for b in (1, 2, 4, 8, 16, 32, 64) for q in (1, 2, 4, 8) for c in (128, 512, 2048)]
    else:
        rows = [(b, p, 0) for b in (1, 2, 4) for p in (64, 256, 1024, 4096)] + [(1, 512, c) for c in (1024, 4096)]
    b, q, c = (list(x) for x in zip(*rows, strict=True))
    return pl.DataFrame({"gpu": "SyntheticGPU", "model": model, "phase": phase, "batch": b, "query_tokens": q,
                         "context": c})


TRUE = {
    "decode": {"const": 6.0, "batch": 0.02, "tokens": 0.01, "context": 0.0002, "tokens_sq": 0.0005},
    "prefill": {"const": 5.0, "tokens": 0.025, "tokens_sq": 1e-6, "tokens_context": 2e-6},
}


def _synthetic(noise: float, seed: int = 1, scale: float = 1.0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for model, mult in (("llama2-7b", 1.0), ("llama-68m", 0.03)):
        for phase in ("decode", "prefill"):
            g = _grid(model, phase)
            X = features(g.with_columns(pl.col(c).cast(pl.Float64) for c in ("batch", "query_tokens", "context")))
            ms = sum(v * X[:, FEATURES.index(k)] for k, v in TRUE[phase].items()) * mult * scale
            ms = ms * (1 + noise * rng.standard_normal(len(ms)))
            parts.append(g.with_columns(ms_median=pl.Series(ms)))
    return pl.concat(parts)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return lapsbench("calibrate", *args)


def _fit(csv: Path, out: Path, **kw: object) -> dict:
    fits, _ = fit_profile(csv, out, kw.get("target", "llama2-7b"), ["llama-68m"], None, None,
                          kw.get("gpu_memory_gb", 80.0), None, [], 0.25, 0, "test")  # type: ignore[arg-type]
    return fits


def test_fit_recovers_known_linear_coefficients(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    _synthetic(noise=0.0).write_csv(csv)
    out = tmp_path / "p.toml"
    fits = _fit(csv, out)
    data = toml_loads(out.read_text())
    for phase in ("decode", "prefill"):
        assert fits["llama2-7b"][phase]["mape"] < 1e-6
        coef = data["models"]["llama2-7b"][phase]
        if coef["form"] == "linear":  # exact data: the linear form is chosen and equals the truth
            for k, v in TRUE[phase].items():
                assert coef[k] == pytest.approx(v, rel=1e-4)
    cost = load_profile_file(out)
    # One verify of 8 requests × 5 tokens with 1000 cached tokens each, priced through the engine's API.
    want = (6.0 + 0.02 * 8 + 0.01 * 40 + 0.0002 * 8000 + 0.0005 * 8 * 25) / 1000
    assert cost.verify_s(np.array([8.0]), np.array([40.0]), np.array([8000.0]))[0] == pytest.approx(want, rel=1e-6)
    # draft: one token per request
    want_d = 0.03 * (6.0 + 0.02 * 8 + 0.01 * 8 + 0.0002 * 8000 + 0.0005 * 8) / 1000
    assert cost.draft_s(np.array([8.0]), np.array([8000.0]))[0] == pytest.approx(want_d, rel=1e-6)


def test_fit_with_noise_predicts_within_noise(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    _synthetic(noise=0.02).write_csv(csv)
    out = tmp_path / "p.toml"
    fits = _fit(csv, out)
    for model in ("llama2-7b", "llama-68m"):
        for phase in ("decode", "prefill"):
            assert fits[model][phase]["mape"] < 0.04, (model, phase, fits[model][phase])
    data = toml_loads(out.read_text())
    assert data["fit"]["llama2-7b"]["decode"]["n_test"] > 0
    rows = check_profile(out, csv, None)
    assert all(r["mape"] < 0.04 for r in rows)


WIDE = {"const": 0.25, "batch": 0.004, "context": 9e-6, "context_max": 4e-5}  # llama-68m from 32 requests


def test_fit_finds_a_wide_batch_regime(tmp_path: Path) -> None:
    """A draft whose decode forward changes cost regime from batch 32 on (as llama-68m's does on an H200):
    the fit chooses a form with a wide-batch regime from 32, writes it to the profile, and the profile's price
    follows the truth on both sides (compiled pricing = these forms: tests/test_pricing.py); without that
    regime the same rows fit clearly worse."""
    rng = np.random.default_rng(5)
    data = _synthetic(noise=0.0)
    draft = data.filter((pl.col("model") == "llama-68m") & (pl.col("phase") == "decode"))
    X = features(draft.with_columns(pl.col(c).cast(pl.Float64) for c in ("batch", "query_tokens", "context")))
    wide = sum(v * X[:, FEATURES.index(k)] for k, v in WIDE.items())
    ms = np.where(X[:, FEATURES.index("batch")] >= 32, wide, draft["ms_median"].to_numpy())
    ms = ms * (1 + 0.005 * rng.standard_normal(ms.size))
    data = pl.concat([data.filter((pl.col("model") != "llama-68m") | (pl.col("phase") != "decode")),
                      draft.with_columns(ms_median=pl.Series(ms))])
    csv = tmp_path / "m.csv"
    data.write_csv(csv)
    out = tmp_path / "p.toml"
    st = _fit(csv, out)["llama-68m"]["decode"]
    assert st["form"].endswith("+wide32") and st["mape"] < 0.01, st
    assert min(v for k, v in st["cv_rmsre"].items() if "wide" not in k) > 3 * st["cv_rmsre"][st["form"]]
    table = toml_loads(out.read_text())["models"]["llama-68m"]["decode"]["wide"]
    assert table["from_batch"] == 32.0 and set(table) - {"from_batch"} <= set(WIDE)
    cost = load_profile_file(out)
    assert cost.draft.wide_from == 32.0
    # one draft forward of n requests at 1000 cached tokens each
    truth = {16: 0.03 * (6.0 + 0.02 * 16 + 0.01 * 16 + 0.0002 * 16000 + 0.0005 * 16),
             64: 0.25 + 0.004 * 64 + 9e-6 * 64000 + 4e-5 * 1000}
    for n, ms in truth.items():
        got = cost.draft_s(np.array([float(n)]), np.array([1000.0 * n]), np.array([1000.0]))[0] * 1000
        assert got == pytest.approx(ms, rel=0.03), n


def test_fit_accepts_other_tool_same_schema(tmp_path: Path) -> None:
    """Extra columns, shuffled rows and columns, Parquet, no provenance sidecar."""
    df = _synthetic(noise=0.01).with_columns(engine=pl.lit("vllm-0.6"), tp=pl.lit(1), ms_mean=pl.col("ms_median"))
    df = df.sample(fraction=1.0, shuffle=True, seed=3).select(list(reversed(df.columns)))
    path = tmp_path / "other.parquet"
    df.write_parquet(path)
    out = tmp_path / "other.toml"
    r = _cli("fit", str(path), "--out", str(out), "--target", "llama2-7b", "--draft", "llama-68m",
             "--gpu-memory-gb", "80")
    assert r.returncode == 0, r.stderr
    assert "llama2-7b" in r.stdout and "MAPE" in r.stdout
    cost = load_profile_file(out)
    assert cost.meta["gpu"] == "SyntheticGPU"
    assert cost.kv_capacity_tokens == kv_capacity_tokens(80 * 10**9, MODELS["llama2-7b"], MODELS["llama-68m"])


def test_check_small_on_own_data_large_on_mismatch(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    _synthetic(noise=0.01).write_csv(csv)
    out = tmp_path / "p.toml"
    _fit(csv, out)
    r = _cli("check", str(out), str(csv))
    assert r.returncode == 0, r.stderr
    own = check_profile(out, csv, None)
    assert max(x["mape"] for x in own) < 0.03
    slow = tmp_path / "slow.csv"
    _synthetic(noise=0.01, seed=2, scale=1.6).write_csv(slow)
    other = check_profile(out, slow, None)
    assert min(x["mape"] for x in other) > 0.3
    assert all(x["bias"] < -0.3 for x in other)  # the profile predicts too fast for the slower GPU


def test_kv_capacity_derivation() -> None:
    t, d = MODELS["llama2-7b"], MODELS["llama-68m"]
    assert t.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2
    assert 6.7e9 < t.params < 6.8e9
    cap = kv_capacity_tokens(80 * 10**9, t, d)
    assert cap % 16 == 0
    free = 0.9 * 80e9 - t.weight_bytes - d.weight_bytes - 2 * 1024**3
    assert free / (t.kv_bytes_per_token + d.kv_bytes_per_token) - 16 < cap <= free / (
        t.kv_bytes_per_token + d.kv_bytes_per_token)


def _bad(tmp_path: Path, df: pl.DataFrame, *extra: str, suffix: str = ".csv") -> tuple[subprocess.CompletedProcess,
                                                                                          Path]:
    path = tmp_path / f"bad{suffix}"
    df.write_csv(path)
    out = tmp_path / "never.toml"
    r = _cli("fit", str(path), "--out", str(out), "--target", "llama2-7b", "--draft", "llama-68m",
             "--gpu-memory-gb", "80", *extra)
    return r, out


@pytest.mark.parametrize("case, needle", [
    ("missing_column", "ms_median"),
    ("non_positive", "ms_median"),
    ("conflicting_duplicate", "conflicting"),
    ("too_few_rows", "prefill"),
    ("bad_phase", "phase"),
    ("non_numeric", "batch"),
])
def test_bad_input_exits_2_one_line_nothing_written(tmp_path: Path, case: str, needle: str) -> None:
    df = _synthetic(noise=0.0)
    if case == "missing_column":
        df = df.drop("ms_median")
    elif case == "non_positive":
        df = df.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(0.0).otherwise(pl.col("ms_median"))
                             .alias("ms_median"))
    elif case == "conflicting_duplicate":
        df = pl.concat([df, df.head(1).with_columns(pl.col("ms_median") * 2)])
    elif case == "too_few_rows":
        df = df.filter(~((pl.col("model") == "llama2-7b") & (pl.col("phase") == "prefill")) | (pl.col("batch") == 4)
                       & (pl.col("query_tokens") == 64))
    elif case == "bad_phase":
        df = df.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("verify")).otherwise(pl.col("phase"))
                             .alias("phase"))
    elif case == "non_numeric":
        df = df.with_columns(pl.col("batch").cast(pl.Utf8)).with_columns(
            pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("many")).otherwise(pl.col("batch")).alias("batch"))
    r, out = _bad(tmp_path, df)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".never.toml*"))


def test_identical_duplicates_are_merged(tmp_path: Path) -> None:
    df = _synthetic(noise=0.0)
    r, out = _bad(tmp_path, pl.concat([df, df.head(3)]))
    assert r.returncode == 0, r.stderr
    assert out.exists()


def test_missing_file_and_unknown_model_shape(tmp_path: Path) -> None:
    r = _cli("fit", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.toml"))
    assert r.returncode == 2 and "no such measured file" in r.stderr
    df = _synthetic(noise=0.0).with_columns(pl.col("model").str.replace("llama2-7b", "mystery-7b"))
    path = tmp_path / "m.csv"
    df.write_csv(path)
    r = _cli("fit", str(path), "--out", str(tmp_path / "x.toml"), "--target", "mystery-7b", "--draft", "llama-68m",
             "--gpu-memory-gb", "80")
    assert r.returncode == 2 and "--model-config" in r.stderr
    assert not (tmp_path / "x.toml").exists()
    r = _cli("fit", str(path), "--out", str(tmp_path / "x.toml"), "--target", "mystery-7b", "--draft", "llama-68m",
             "--gpu-memory-gb", "80", "--model-config",
             "mystery-7b:hidden=4096,intermediate=11008,layers=32,heads=32,kv_heads=8,vocab=32000")
    assert r.returncode == 0, r.stderr
    assert load_profile_file(tmp_path / "x.toml").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2


SHIPPED = sorted((ROOT / "profiles").glob("*.toml"))
# every shipped forward-pass profile: profiles/*.toml and the H200 llama3-8b one kept beside the replay's
FORWARD = [*SHIPPED, ROOT / "profiles" / "replay" / "h200-forward-llama3-8b.toml"]


def test_shipped_profiles_exist() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"h100-llama2-7b", "h100-llama3-8b", "h100-llama2-13b", "h200-llama2-7b"} <= names


@pytest.mark.parametrize("path", FORWARD, ids=[p.stem for p in FORWARD])
def test_shipped_profile_loads_and_meets_error_targets(path: Path) -> None:
    """Held-out MAPE <= 5% and worst APE <= 15% for every model and phase; the measured file is the one fitted."""
    data = toml_loads(path.read_text())
    cost = load_profile_file(path)
    assert cost.kv_capacity_tokens > 0 and cost.draft is not None
    assert set(data["fit"]) == set(data["models"])
    for model, phases in data["fit"].items():
        assert set(phases) == {"decode", "prefill"}, (path.name, model)
        for phase, st in phases.items():
            assert st["n_test"] >= 5
            assert st["mape"] <= MAPE_LIMIT, (path.name, model, phase, st["mape"])
            assert st["max_ape"] <= WORST_LIMIT, (path.name, model, phase, st["max_ape"])
    n = np.array([1.0, 8.0, 64.0])
    t = cost.verify_s(n, 5 * n, 1000 * n)
    assert np.all(np.diff(t) > 0) and np.all(t > 0.001) and np.all(t < 1.0)
    prov = data["provenance"]
    measured = ROOT / "profiles" / "measured" / prov["measured_file"]
    if path.parent == ROOT / "profiles":
        assert measured.name == f"{path.stem.split('-')[0]}.csv"  # profiles/X-*.toml is fitted from measured/X.csv
    # the measured file is byte for byte the one the profile was fitted from (h200.csv: h200-llama2-7b's)
    assert hashlib.sha256(measured.read_bytes()).hexdigest() == prov["measured_sha256"]
    assert prov["fit_command"].startswith("lapsbench calibrate fit profiles/measured/" + measured.name + " ")
    rows = check_profile(path, measured, None)
    by = {(r["model"], r["phase"]): r for r in rows}
    assert by[(data["target"], "decode")]["mape"] < MAPE_LIMIT


@pytest.mark.parametrize("bad", ["0", "-4.0", '"many"', "true", "nan"])
def test_bad_wide_regime_is_one_line(tmp_path: Path, bad: str) -> None:
    """A profile whose wide-batch regime has no valid batch threshold: one line naming the key, exit 2."""
    base = (ROOT / "profiles" / "h100-llama2-7b.toml").read_text()
    head = '[models."llama-68m".decode.wide]\nfrom_batch = '  # the shipped profile's regime, its threshold replaced
    i = base.index(head) + len(head)
    text = base[:i] + bad + base[base.index("\n", i):]
    assert text != base
    profile = tmp_path / "p.toml"
    profile.write_text(text)
    with pytest.raises(LapsbenchError, match=r"llama-68m.*decode\.wide\.from_batch: .*expected a batch size >= 1"):
        load_profile_file(profile)
    r = _cli("check", str(profile), str(ROOT / "profiles" / "measured" / "h100.csv"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "wide.from_batch" in r.stderr, r.stderr
