"""The LAPS-SD tables of docs/reproduction.md: every paper-like workload (and the Azure stress tests) run
with `lapsbench compare`, then per workload and load the mean / p50 / p99 JCT and mean TTFT of every
scheduler with 95% t-intervals over replications, each scheduler's paired change of mean JCT against
FCFS, LAPS-SD's paired change against FCFS, SSJF, LAS, MLFQ and SRPT-SD, and the workload's service-time
CV, prefill share, share of requests that become perceptible and request medians.

Sign convention everywhere: change = mean(scheduler) / mean(reference) − 1; negative = lower latency.

    python scripts/laps_sd_table.py [--replications R] [--only chat_poisson,...] [--reuse] > tables.md

Results go to results/papers/<scenario>-compare/ (`--reuse` rebuilds the tables from them without
simulating again).
"""

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.config.scenario import load_scenario
from lapsbench.engine.steptable import build_step_table
from lapsbench.results.metrics import ci95_halfwidth
from lapsbench.results.stats import paired_t_ratio
from lapsbench.run.assembly import build_acceptance, build_cost, load_workload
from lapsbench.schedulers import make_policy
from lapsbench.schedulers.laps_sd import perceptible_steps

PAPER = ["chat_poisson", "chat_bursty", "code_poisson", "code_bursty", "reasoning_poisson", "reasoning_bursty",
         "stress_poisson"]
AZURE = ["laps_sd_chat", "laps_sd_code", "laps_sd_reasoning"]  # stress tests, at their own load (ρ ≈ 0.8)
LOADS = "0.6,0.8,0.9"
SUBJECT = "laps-sd"
AGAINST = ["fcfs", "ssjf", "las", "mlfq", "srpt-sd"]


def simulate(name: str, replications: int | None) -> Path:
    out = Path(f"results/papers/{name}-compare")
    cmd = [sys.executable, "-m", "lapsbench", "compare", f"scenarios/papers/{name}.toml", "--no-plots", "--quiet",
           "--out", str(out)]
    if name in PAPER:
        cmd += ["--rates", LOADS]
    if replications:
        cmd += ["--replications", str(replications)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def workload_stats(name: str, replications: int) -> dict:
    """Service-time CV and prefill share (batch-1 true service, pooled over replications), the share of
    requests LAPS-SD's stability rule (defaults) marks perceptible before their last step, and medians."""
    s = load_scenario(f"scenarios/papers/{name}.toml")
    s = dataclasses.replace(s, replications=replications)
    cost = build_cost(s)
    rule = make_policy("laps-sd")
    service, prefill, perceptible, prompts, outputs = [], [], [], [], []
    for r in range(replications):
        w = load_workload(s, r)
        table = build_step_table(w.request_id, w.prompt_tokens, w.output_tokens, s.speculation.k, cost,
                                 build_acceptance(s, w, r))
        total = table.service_ns() / 1e9
        service.append(total)
        prefill.append(table.cum_ns[table.offset[:-1]] / 1e9)  # step 0 of each request is its prefill
        perceptible.append(perceptible_steps(table, s.speculation.k, rule.window, rule.tolerance, rule.min_steps) >= 0)
        prompts.append(w.prompt_tokens)
        outputs.append(w.output_tokens)
    service, prefill = np.concatenate(service), np.concatenate(prefill)
    return {"cv": service.std() / service.mean(), "prefill": prefill.sum() / service.sum(),
            "perceptible": np.concatenate(perceptible).mean(), "prompt_p50": np.median(np.concatenate(prompts)),
            "output_p50": np.median(np.concatenate(outputs)), "service_mean": service.mean()}


def fmt(mean: float, half: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if np.isfinite(half) else f"{mean:.{digits}f}"


def pct(lo: float, mid: float, hi: float) -> str:
    return f"{100 * mid:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def matrix(req: pl.DataFrame, label: str) -> np.ndarray:
    """JCT shaped (requests, replications), rows in request order (the pairing paired_t_ratio needs)."""
    sub = req.filter(pl.col("scheduler") == label).sort("replication", "request_id")
    reps = sub["replication"].n_unique()
    return sub["jct_s"].to_numpy().reshape(reps, -1).T


def tables(name: str, out: Path, stats: dict, answers: list[str]) -> str:
    summary = pl.read_csv(out / "summary.csv")
    per_rep = pl.read_csv(out / "summary_by_replication.csv")
    req = pl.read_parquet(out / "requests.parquet", columns=["rate_scale", "scheduler", "replication", "request_id",
                                                             "jct_s"])
    lines = [f"### {name}", "",
             f"service CV {stats['cv']:.2f}, prefill share {100 * stats['prefill']:.1f}%, perceptible "
             f"{100 * stats['perceptible']:.0f}% of requests, mean service {stats['service_mean']:.3f} s, "
             f"prompt p50 {stats['prompt_p50']:.0f}, output p50 {stats['output_p50']:.0f} tokens", ""]
    for scale in sorted(summary["rate_scale"].unique().to_list()):
        rows = summary.filter(pl.col("rate_scale") == scale)
        reps = per_rep.filter(pl.col("rate_scale") == scale)
        at = req.filter(pl.col("rate_scale") == scale)
        lines += [f"ρ = {scale:g}" if name in PAPER else "ρ ≈ 0.8 (the scenario's rate_scale)", "",
                  "| scheduler | JCT mean (s) | JCT p50 (s) | JCT p99 (s) | TTFT mean (s) | JCT mean vs fcfs |",
                  "|---|---|---|---|---|---|"]
        for row in rows.iter_rows(named=True):
            mine = reps.filter(pl.col("scheduler") == row["scheduler"])
            p50 = ci95_halfwidth(mine["jct_p50_s"].to_numpy())
            p99 = ci95_halfwidth(mine["jct_p99_s"].to_numpy())
            change = "baseline" if row["scheduler"] == "fcfs" else pct(
                row["jct_mean_change_lo"], row["jct_mean_change"], row["jct_mean_change_hi"])
            lines.append(f"| {row['scheduler']} | {fmt(row['jct_mean_s'], row['jct_mean_ci95_s'])} | "
                         f"{fmt(row['jct_p50_s'], p50)} | {fmt(row['jct_p99_s'], p99, 1)} | "
                         f"{fmt(row['ttft_mean_s'], row['ttft_mean_ci95_s'])} | {change} |")
        subject = matrix(at, SUBJECT)
        versus = []
        for other in AGAINST:
            iv = paired_t_ratio(subject, matrix(at, other))
            versus.append(f"{other} {pct(iv.lo, iv.estimate, iv.hi)}")
        ssjf = paired_t_ratio(matrix(at, "ssjf"), matrix(at, "fcfs"))
        oracle = paired_t_ratio(matrix(at, "srpt-sd"), matrix(at, "ssjf"))
        lines += ["", f"{SUBJECT} mean JCT vs " + "; ".join(versus), ""]
        load = f"{scale:g}" if name in PAPER else "≈ 0.8"
        answers.append(f"| {name} | {load} | " + " | ".join(v.split(" ", 1)[1] for v in versus)
                       + f" | {pct(ssjf.lo, ssjf.estimate, ssjf.hi)} | {pct(oracle.lo, oracle.estimate, oracle.hi)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replications", type=int, default=None)
    parser.add_argument("--only", default="")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or PAPER + AZURE
    answers: list[str] = []
    for name in names:
        out = Path(f"results/papers/{name}-compare")
        if not (args.reuse and (out / "summary.csv").is_file()):
            out = simulate(name, args.replications)
        reps = pl.read_csv(out / "summary_by_replication.csv")["replication"].n_unique()
        print(tables(name, out, workload_stats(name, reps), answers), flush=True)
    print("### Summary: LAPS-SD's paired change of mean JCT (negative = LAPS-SD faster)\n")
    print("| workload | ρ | vs fcfs | vs ssjf | vs las | vs mlfq | vs srpt-sd | ssjf vs fcfs | srpt-sd vs ssjf |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(answers))


if __name__ == "__main__":
    main()
