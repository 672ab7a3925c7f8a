"""Side by side: a real run (a `lapsbench replay` results directory, or any engine's requests in the results
layout) against a simulation of the same scenario and seed (`lapsbench run`).

Per scheduler: mean / p50 / p99 of JCT, TTFT and TPOT for both and their relative error; the per-request
error distribution (requests matched by scheduler, replication and request_id); whether the schedulers rank
the same by mean JCT; the accuracy targets of docs/validation.md; and a plot of simulated against real
per-request JCT. Writes OUT/validation.md, OUT/validation.json and OUT/plots/validation_jct.{png,svg}."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsbench.errors import LapsbenchError
from lapsbench.fsutil import atomic_dir
from lapsbench.results.writer import json_safe

KEY = ("scheduler", "replication", "request_id")
METRICS = ("jct_s", "ttft_s", "tpot_s")
STATS = ("mean", "p50", "p99")
# Accuracy targets (issue 14): |sim/real − 1| of a scheduler's statistic.
TARGETS = {("jct_s", "mean"): 0.05, ("jct_s", "p99"): 0.10, ("ttft_s", "mean"): 0.10}


@dataclass(frozen=True)
class Validation:
    real: Path
    sim: Path
    rows: list[dict[str, Any]]       # one per scheduler
    ranking: dict[str, Any]
    pairs: pl.DataFrame              # matched requests: KEY, real_*, sim_*
    estimates: dict[str, Any]        # the profile each run's schedulers estimated with (meta.json), and if same


def _estimates(real: Path, sim: Path) -> dict[str, Any]:
    """`scheduler_profile_sha256` of both runs' meta.json (None where absent: an older or a foreign run). When
    they differ, cost-aware policies (srpt-sd, laps-sd, skip-join) decided on different estimates, so the runs
    differ in policy as well as in step time."""
    shas = {}
    for role, d in (("real", real), ("sim", sim)):
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        shas[role] = meta.get("scheduler_profile_sha256") if isinstance(meta, dict) else None
    known = shas["real"] is not None and shas["sim"] is not None
    return {**shas, "same": shas["real"] == shas["sim"] if known else None}


def _requests(d: Path, role: str) -> pl.DataFrame:
    path = d / "requests.parquet"
    if not path.is_file():
        raise LapsbenchError(f"{role} {d}: no requests.parquet; expected a results directory (lapsbench run/replay)")
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for malformed files
        raise LapsbenchError(f"{path}: cannot read: {str(exc).splitlines()[0]}") from None
    missing = [c for c in (*KEY, *METRICS) if c not in df.columns]
    if missing:
        raise LapsbenchError(f"{path}: missing column(s) {', '.join(missing)}; expected the results layout "
                             f"({', '.join((*KEY, *METRICS))})")
    df = df.select([pl.col("scheduler").cast(pl.Utf8), pl.col("replication").cast(pl.Int64),
                    pl.col("request_id").cast(pl.Int64), *(pl.col(m).cast(pl.Float64) for m in METRICS)])
    dup = df.group_by(list(KEY)).len().filter(pl.col("len") > 1)
    if dup.height:
        r = dup.row(0, named=True)
        raise LapsbenchError(f"{path}: request scheduler={r['scheduler']} replication={r['replication']} "
                             f"request_id={r['request_id']} appears {r['len']} times; expected once")
    return df


def _stat(x: np.ndarray, stat: str) -> float:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan
    return float(x.mean()) if stat == "mean" else float(np.quantile(x, 0.5 if stat == "p50" else 0.99))


def _rel(sim: float, real: float) -> float:
    return sim / real - 1 if real > 0 and math.isfinite(sim) and math.isfinite(real) else math.nan


def _ranks(means: dict[str, float]) -> list[str]:
    return sorted(means, key=lambda s: (means[s], s))


def _kendall_tau(a: list[str], b: list[str]) -> float:
    """Kendall's τ between two orderings of the same labels (1 = same order)."""
    pos = {s: i for i, s in enumerate(b)}
    n = len(a)
    if n < 2:
        return 1.0
    concordant = sum(1 if pos[a[i]] < pos[a[j]] else -1 for i in range(n) for j in range(i + 1, n))
    return concordant / (n * (n - 1) / 2)


def validate(real: Path, sim: Path) -> Validation:
    """Match requests of the two results directories and compute every table (no files written)."""
    r, s = _requests(real, "REAL"), _requests(sim, "SIM")
    rs, ss = set(r["scheduler"].unique().to_list()), set(s["scheduler"].unique().to_list())
    if rs != ss:
        raise LapsbenchError(f"schedulers differ: REAL {real} has {sorted(rs)}, SIM {sim} has {sorted(ss)}; "
                             "expected the same scenario")
    for a, b, na, nb in ((r, s, "REAL", "SIM"), (s, r, "SIM", "REAL")):
        extra = a.join(b.select(KEY), on=list(KEY), how="anti")
        if extra.height:
            x = extra.sort(list(KEY)).row(0, named=True)
            raise LapsbenchError(f"{extra.height} request(s) of {na} are not in {nb} (first: scheduler "
                                 f"{x['scheduler']} replication {x['replication']} request_id {x['request_id']}); "
                                 "expected the same scenario, seed and replications")
    pairs = r.rename({m: f"real_{m}" for m in METRICS}).join(s.rename({m: f"sim_{m}" for m in METRICS}),
                                                             on=list(KEY), how="inner").sort(list(KEY))
    order = sorted(rs, key=lambda lbl: r["scheduler"].to_list().index(lbl))  # as the real run lists them
    rows = []
    for label in order:
        p = pairs.filter(pl.col("scheduler") == label)
        row: dict[str, Any] = {"scheduler": label, "requests": p.height}
        for m in METRICS:
            rv, sv = p[f"real_{m}"].to_numpy(), p[f"sim_{m}"].to_numpy()
            for st in STATS:
                a, b = _stat(rv, st), _stat(sv, st)
                row[f"{m}_{st}_real"], row[f"{m}_{st}_sim"], row[f"{m}_{st}_err"] = a, b, _rel(b, a)
            ok = np.isfinite(rv) & np.isfinite(sv) & (rv > 0)
            err = sv[ok] / rv[ok] - 1
            row[f"{m}_req_mape"] = float(np.mean(np.abs(err))) if err.size else math.nan
            for q, name in ((0.1, "p10"), (0.5, "p50"), (0.9, "p90")):
                row[f"{m}_req_err_{name}"] = float(np.quantile(err, q)) if err.size else math.nan
            row[f"{m}_req_ape_p99"] = float(np.quantile(np.abs(err), 0.99)) if err.size else math.nan
        row["targets_met"] = all(abs(row[f"{m}_{st}_err"]) <= tol for (m, st), tol in TARGETS.items())
        rows.append(row)
    real_order = _ranks({x["scheduler"]: x["jct_s_mean_real"] for x in rows})
    sim_order = _ranks({x["scheduler"]: x["jct_s_mean_sim"] for x in rows})
    ranking = {"real": real_order, "sim": sim_order, "same": real_order == sim_order,
               "kendall_tau": _kendall_tau(real_order, sim_order)}
    return Validation(real, sim, rows, ranking, pairs, _estimates(real, sim))


def _pct(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{100 * x:+.1f}%"


def _abs_pct(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _num(x: float, scale: float = 1.0) -> str:
    return "–" if not math.isfinite(x) else f"{x * scale:.3f}"


def markdown(v: Validation, command: str = "") -> str:
    """validation.md: the tables, in the order docs/validation.md uses."""
    out = [f"# Validation: {v.sim} (simulated) against {v.real} (real)", ""]
    if command:
        out += [f"`{command}`", ""]
    names = {"jct_s": ("JCT", "s", 1.0), "ttft_s": ("TTFT", "s", 1.0), "tpot_s": ("TPOT", "ms", 1000.0)}
    for m, (title, unit, scale) in names.items():
        out += [f"## {title} ({unit}): real / simulated (error)", "",
                "| scheduler | requests | mean | p50 | p99 |", "|---|---|---|---|---|"]
        for r in v.rows:
            cells = [f"{_num(r[f'{m}_{st}_real'], scale)} / {_num(r[f'{m}_{st}_sim'], scale)} "
                     f"({_pct(r[f'{m}_{st}_err'])})" for st in STATS]
            out.append(f"| {r['scheduler']} | {r['requests']} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Per-request error (simulated / real − 1)", "",
            "| scheduler | JCT MAPE | JCT p10 / p50 / p90 | JCT p99 of abs. error | TTFT MAPE | TPOT MAPE |",
            "|---|---|---|---|---|---|"]
    for r in v.rows:
        out.append(f"| {r['scheduler']} | {_abs_pct(r['jct_s_req_mape'])} | {_pct(r['jct_s_req_err_p10'])} / "
                   f"{_pct(r['jct_s_req_err_p50'])} / {_pct(r['jct_s_req_err_p90'])} | "
                   f"{_abs_pct(r['jct_s_req_ape_p99'])} | {_abs_pct(r['ttft_s_req_mape'])} | "
                   f"{_abs_pct(r['tpot_s_req_mape'])} |")
    rk = v.ranking
    out += ["", "## Ranking by mean JCT (best first)", "",
            f"- real: {', '.join(rk['real'])}", f"- simulated: {', '.join(rk['sim'])}",
            f"- same ranking: {'yes' if rk['same'] else 'no'} (Kendall τ = {rk['kendall_tau']:.2f})", "",
            "## Targets (|error| of mean JCT ≤ 5%, p99 JCT ≤ 10%, mean TTFT ≤ 10%)", "",
            "| scheduler | mean JCT | p99 JCT | mean TTFT | met |", "|---|---|---|---|---|"]
    for r in v.rows:
        out.append(f"| {r['scheduler']} | {_pct(r['jct_s_mean_err'])} | {_pct(r['jct_s_p99_err'])} | "
                   f"{_pct(r['ttft_s_mean_err'])} | {'yes' if r['targets_met'] else 'no'} |")
    out += ["", "## Scheduler estimates", "", estimates_line(v), "",
            "![simulated vs real per-request JCT](plots/validation_jct.svg)", ""]
    return "\n".join(out)


def estimates_line(v: Validation) -> str:
    """Whether both runs' schedulers estimated step times with the same profile (meta.json)."""
    e = v.estimates
    if e["same"] is None:
        return ("Unknown whether both runs' schedulers estimated with the same profile (no scheduler_profile_sha256 "
                "in a meta.json).")
    if e["same"]:
        return f"Both runs' schedulers estimated with the same profile (sha256 {e['real'][:12]}…)."
    return (f"**The schedulers estimated with different profiles** (real sha256 {e['real'][:12]}…, simulated "
            f"{e['sim'][:12]}…): cost-aware policies decided on different estimates. Simulate with "
            "`--set model.scheduler_profile=...` naming the profile the real run's schedulers used.")


def plot(v: Validation, out: Path) -> list[Path]:
    """Simulated against real per-request JCT, log-log, one colour per scheduler, with y = x and ±5%."""
    from lapsbench.results.plots import _save, _setup, style

    plt = _setup()
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    jr, js = v.pairs["real_jct_s"].to_numpy(), v.pairs["sim_jct_s"].to_numpy()
    ok = (jr > 0) & (js > 0)
    lo, hi = float(min(jr[ok].min(), js[ok].min())) * 0.8, float(max(jr[ok].max(), js[ok].max())) * 1.25
    line = np.array([lo, hi])
    ax.plot(line, line, color="#777777", linewidth=1.0, label="simulated = real")
    ax.fill_between(line, line * 0.95, line * 1.05, color="#bbbbbb", alpha=0.4, linewidth=0, label="±5%")
    for r in v.rows:
        p = v.pairs.filter(pl.col("scheduler") == r["scheduler"])
        st = style(r["scheduler"])
        ax.scatter(p["real_jct_s"].to_numpy(), p["sim_jct_s"].to_numpy(), s=9, alpha=0.6, color=st["color"],
                   marker=st["marker"], label=f"{r['scheduler']} (MAPE {100 * r['jct_s_req_mape']:.1f}%)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("real JCT (s, log scale)")
    ax.set_ylabel("simulated JCT (s, log scale)")
    ax.set_title("per-request JCT: simulated against real")
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    fig.tight_layout()
    paths = _save(fig, out, "validation_jct")
    plt.close(fig)
    return paths


def write_validation(out: Path, v: Validation, command: str, plots: bool = True) -> None:
    """validation.md, validation.json and the plot, into `out` (replaced only when complete)."""
    payload = {"real": str(v.real), "sim": str(v.sim), "command": command, "targets": {
        f"{m}_{st}": tol for (m, st), tol in TARGETS.items()}, "schedulers": v.rows, "ranking": v.ranking,
        "scheduler_estimates": v.estimates}
    with atomic_dir(out) as tmp:
        (tmp / "validation.md").write_text(markdown(v, command))
        (tmp / "validation.json").write_text(json.dumps(json_safe(payload), indent=2) + "\n")
        if plots:
            (tmp / "plots").mkdir()
            plot(v, tmp / "plots")
