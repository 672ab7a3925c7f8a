"""`lapsbench validate REAL SIM`: statistics and per-request errors worked by hand on two small results
directories, ranking, targets, files written; mismatched inputs → one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lapsbench.errors import LapsbenchError
from lapsbench.results.validate import validate

from cli_helpers import lapsbench

REPO = Path(__file__).resolve().parent.parent


def results_dir(path: Path, jct: dict[str, list[float]], ttft_scale: float = 0.1) -> Path:
    """A results directory with requests.parquet: per scheduler, requests 0..n-1 of replication 0."""
    rows = []
    for label, values in jct.items():
        for i, j in enumerate(values):
            rows.append({"scheduler": label, "replication": 0, "request_id": 10 + i, "jct_s": j,
                         "ttft_s": j * ttft_scale, "tpot_s": None if i == 0 else j / 50})
    path.mkdir(parents=True)
    pl.DataFrame(rows, schema={"scheduler": pl.Utf8, "replication": pl.Int32, "request_id": pl.Int64,
                               "jct_s": pl.Float64, "ttft_s": pl.Float64, "tpot_s": pl.Float64}).write_parquet(
        path / "requests.parquet")
    return path


REAL = {"fcfs": [1.0, 2.0, 3.0, 4.0], "las": [1.0, 1.0, 2.0, 8.0]}       # mean 2.5 and 3.0: fcfs first
SIM = {"fcfs": [1.1, 2.2, 3.3, 4.4], "las": [0.9, 0.9, 1.8, 7.2]}        # +10% and −10%: mean 2.75, 2.7


def test_tables_by_hand(tmp_path: Path) -> None:
    v = validate(results_dir(tmp_path / "real", REAL), results_dir(tmp_path / "sim", SIM, ttft_scale=0.105))
    fcfs, las = v.rows
    assert fcfs["scheduler"] == "fcfs" and fcfs["requests"] == 4
    assert fcfs["jct_s_mean_real"] == pytest.approx(2.5) and fcfs["jct_s_mean_sim"] == pytest.approx(2.75)
    assert fcfs["jct_s_mean_err"] == pytest.approx(0.10)
    assert fcfs["jct_s_p50_real"] == pytest.approx(2.5)            # linear quantile of 1, 2, 3, 4
    assert fcfs["jct_s_p99_real"] == pytest.approx(3.97)           # 3 + 0.97 · (4 − 3)
    assert fcfs["jct_s_req_mape"] == pytest.approx(0.10) and fcfs["jct_s_req_err_p50"] == pytest.approx(0.10)
    assert las["jct_s_req_err_p10"] == pytest.approx(-0.10)
    # TTFT: sim = 1.1 · 1.05 · real-ish: (0.105 / 0.1) · 1.1 − 1 = +15.5%
    assert fcfs["ttft_s_mean_err"] == pytest.approx(1.1 * 1.05 - 1)
    assert fcfs["tpot_s_req_mape"] == pytest.approx(0.10)         # the request without a TPOT is left out
    assert not fcfs["targets_met"] and not las["targets_met"]
    # real: fcfs (2.5) before las (3.0); simulated: las (2.7) before fcfs (2.75)
    assert v.ranking == {"real": ["fcfs", "las"], "sim": ["las", "fcfs"], "same": False, "kendall_tau": -1.0}


def test_cli_writes_report_and_plot(tmp_path: Path) -> None:
    real = results_dir(tmp_path / "real", REAL)
    sim = results_dir(tmp_path / "sim", {k: [x * 1.01 for x in v] for k, v in REAL.items()})
    out = tmp_path / "val"
    r = lapsbench("validate", str(real), str(sim), "--out", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "validation.json").read_text())
    assert [s["scheduler"] for s in data["schedulers"]] == ["fcfs", "las"]
    assert all(s["targets_met"] for s in data["schedulers"]) and data["ranking"]["same"]
    assert data["schedulers"][0]["jct_s_mean_err"] == pytest.approx(0.01)
    md = (out / "validation.md").read_text()
    assert "| fcfs | 4 | 2.500 / 2.525 (+1.0%)" in md and "same ranking: yes" in md
    for ext in ("png", "svg"):
        assert (out / "plots" / f"validation_jct.{ext}").stat().st_size > 1000
    assert "same ranking: yes" in r.stdout


@pytest.mark.parametrize("case, needle", [
    ("no_results", "no requests.parquet"),
    ("other_schedulers", "schedulers differ"),
    ("missing_request", "not in SIM"),
    ("missing_column", "missing column"),
])
def test_mismatched_inputs_exit_2(tmp_path: Path, case: str, needle: str) -> None:
    real = results_dir(tmp_path / "real", REAL)
    sim_jct = dict(SIM)
    if case == "other_schedulers":
        sim_jct = {"fcfs": SIM["fcfs"], "srpt": SIM["las"]}
    elif case == "missing_request":
        sim_jct = {"fcfs": SIM["fcfs"][:3], "las": SIM["las"]}
    sim = tmp_path / "sim"
    if case != "no_results":
        results_dir(sim, sim_jct)
    if case == "missing_column":
        pl.read_parquet(sim / "requests.parquet").drop("ttft_s").write_parquet(sim / "requests.parquet")
    with pytest.raises(LapsbenchError, match=needle):
        validate(real, sim)
    out = tmp_path / "val"
    r = lapsbench("validate", str(real), str(sim), "--out", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.glob(".val.*"))


def test_duplicate_request_is_refused(tmp_path: Path) -> None:
    real = results_dir(tmp_path / "real", REAL)
    sim = results_dir(tmp_path / "sim", SIM)
    df = pl.read_parquet(sim / "requests.parquet")
    pl.concat([df, df.head(1)]).write_parquet(sim / "requests.parquet")
    with pytest.raises(LapsbenchError, match="appears 2 times"):
        validate(real, sim)
    assert np.isfinite(validate(real, real).rows[0]["jct_s_req_mape"])
