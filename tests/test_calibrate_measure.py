"""calibrate measure: refuses without torch/CUDA; the timing code runs on CPU with a tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lapsbench.calibrate.measure import Grid, configurations
from lapsbench.calibrate.models import MODELS, parse_model_spec
from lapsbench.errors import LapsbenchError

from cli_helpers import lapsbench

ROOT = Path(__file__).resolve().parents[1]


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(_has_cuda(), reason="this machine has a CUDA GPU")
def test_measure_refuses_without_cuda(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    r = lapsbench("calibrate", "measure", "--model", "llama-68m", "--out", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ("torch" in lines[0] or "CUDA" in lines[0])
    assert not out.exists()


def test_unknown_model_exits_2(tmp_path: Path) -> None:
    r = lapsbench("calibrate", "measure", "--model", "gpt-9", "--out", str(tmp_path / "m.csv"))
    assert r.returncode == 2 and "unknown model 'gpt-9'" in r.stderr


def test_custom_model_spec() -> None:
    name, cfg = parse_model_spec("mine:hidden=256,intermediate=512,layers=2,heads=4,kv_heads=2,vocab=1000")
    assert name == "mine" and cfg.head_dim == 64 and cfg.kv_bytes_per_token == 2 * 2 * 2 * 64 * 2
    with pytest.raises(LapsbenchError, match="missing"):
        parse_model_spec("mine:hidden=256")


def test_grid_respects_kv_budget() -> None:
    rows = configurations(MODELS["llama2-7b"], Grid(), kv_tokens=20000)
    assert rows and all(b * (c + q) <= 20000 for ph, b, q, c in rows if ph == "decode")
    assert {ph for ph, *_ in rows} == {"decode", "prefill"}
    assert {q for ph, _, q, _ in rows if ph == "decode"} == {1, 2, 3, 5, 8}
    draft = configurations(MODELS["llama-68m"], Grid(), kv_tokens=10**7)
    assert {q for ph, _, q, _ in draft if ph == "decode"} == {1}


def test_measure_runs_on_cpu_tiny_model(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from lapsbench.calibrate.measure import measure

    grid = Grid(batches=[1, 2], query_tokens=[1, 3], draft_query_tokens=[1, 3], contexts=[8, 16],
                prefill_lengths=[8, 16], prefill_batches=[1], chunk_lengths=[8], chunk_contexts=[8], min_reps=2)
    out = tmp_path / "tiny.csv"
    rows = measure([parse_model_spec("tiny-test")], out, grid, device="cpu", log=lambda s: None)
    with out.open() as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == len(rows) == 2 * 2 * 2 + 2 + 1
    assert all(float(r["ms_median"]) > 0 and r["model"] == "tiny-test" for r in got)
    assert {r["phase"] for r in got} == {"decode", "prefill"}
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["torch"] and meta["models"]["tiny-test"]["hidden"] == 64


def test_gqa_packed_decode_attention_matches_reference() -> None:
    torch = pytest.importorskip("torch")
    from lapsbench.calibrate.measure import _Llama

    m = _Llama(MODELS["tiny-test"], torch.device("cpu"), 4096, 64)
    B, q, c, H, K, D = 3, 2, 20, 4, 2, 16
    qh, kc, vc = torch.randn(B, q, H, D), torch.randn(B, K, c + q, D), torch.randn(B, K, c + q, D)
    got = m._attention(qh, kc, vc, B, q, c, False, H // K, None).reshape(B, q, H, D)
    ref = torch.nn.functional.scaled_dot_product_attention(
        qh.transpose(1, 2), kc.repeat_interleave(H // K, 1), vc.repeat_interleave(H // K, 1)).transpose(1, 2)
    assert torch.allclose(got, ref, atol=1e-5)
