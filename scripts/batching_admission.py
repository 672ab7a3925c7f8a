"""Guarded vs greedy admission under continuous batching (docs/batching.md §10): regenerates the tables and
plots from scratch with `lapsbench compare --rates`.

    python scripts/batching_admission.py [--requests 20000] [--out results/batching-admission]

Part 1 — the issue-15 case: `lapsbench trace synth` Poisson 9 req/s, geometric outputs (mean 220), lognormal
prompts (median 1020, σ 1.0), seed 1; h100-llama2-7b, k = 4, α = 0.7, max_batch 64, max_batch_tokens 8192;
fcfs, laps-sd, las, mlfq, skip-join-mlfq at three loads up to saturation (--rates), for both preemption
modes and both admission rules. Part 2 — the done-when check under the default (guarded) admission: every
built-in scheduler on that case at its top load (swap), and on scenarios/azure-conv-load.toml at the loads
FCFS sustains. Tables go to OUT/*.md (and stdout), plots to --img.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import polars as pl

REPORTED = ["fcfs", "laps-sd", "las", "mlfq", "skip-join-mlfq"]
PREEMPTION = ["swap", "recompute"]
ADMISSION = ["guarded", "greedy"]
ENGINE = 'batching = "continuous"\nmax_batch = 64\nmax_batch_tokens = 8192\n'


def lapsbench(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lapsbench", *args], check=True)


def scenario(path: Path, trace: Path, schedulers: list[str], preemption: str, admission: str, out: Path) -> Path:
    body = (f'name = "{path.stem}"\nseed = 1\n[trace]\npath = "{trace.resolve()}"\n'
            '[model]\nprofile = "h100-llama2-7b"\n[speculation]\nk = 4\nacceptance = { kind = "fixed", alpha = 0.7 }\n'
            f'[engine]\n{ENGINE}preemption = "{preemption}"\nadmission = "{admission}"\n'
            + "".join(f'[[scheduler]]\nname = "{s}"\n' for s in schedulers) + f'[output]\ndir = "{out}"\n')
    path.write_text(body)
    return path


def compare(toml: Path, rates: str, out: Path, plots: bool = False) -> pl.DataFrame:
    lapsbench("compare", str(toml), "--rates", rates, "--quiet", "--out", str(out), *([] if plots else ["--no-plots"]))
    return pl.read_csv(out / "summary.csv")


def with_fcfs_ratio(summary: pl.DataFrame) -> pl.DataFrame:
    """Sustained throughput and mean JCT against FCFS's at the same load point."""
    fcfs = summary.filter(pl.col("scheduler") == "fcfs").select(
        "rate_scale", pl.col("throughput_rps").alias("fcfs_rps"), pl.col("saturated").alias("fcfs_saturated"))
    return summary.join(fcfs, on="rate_scale").with_columns(
        (pl.col("throughput_rps") / pl.col("fcfs_rps")).alias("vs_fcfs"),
        (pl.col("preempted_s_total") / pl.col("busy_s")).alias("stall_share"))


def cell(row: dict) -> str:
    mark = " \\*" if row["saturated"] else ""
    return f"{row['jct_mean_s']:,.1f} s / {row['vs_fcfs']:.3f}{mark}"


def grid_table(rows: pl.DataFrame) -> str:
    head = "| preemption | admission | load (req/s) | " + " | ".join(REPORTED) + " |"
    lines = [head, "|" + "---|" * (3 + len(REPORTED))]
    for (pre, adm, scale), part in rows.group_by(["preemption", "admission", "rate_scale"], maintain_order=True):
        by = {r["scheduler"]: r for r in part.to_dicts()}
        offered = by["fcfs"]["offered_rps"]
        cells = " | ".join(cell(by[s]) for s in REPORTED)
        lines.append(f"| {pre} | {adm} | {scale:g} ({offered:.2f}) | {cells} |")
    return "\n".join(lines)


def detail_table(rows: pl.DataFrame) -> str:
    lines = ["| preemption | admission | load | scheduler | req/s | vs FCFS | preemptions / request | "
             "evictions / request | of which displacements | swap stall / busy | KV use | TTFT mean s | "
             "JCT p99 s |", "|" + "---|" * 13]
    for r in rows.to_dicts():
        lines.append(f"| {r['preemption']} | {r['admission']} | {r['rate_scale']:g} | {r['scheduler']} | "
                     f"{r['throughput_rps']:.2f} | {r['vs_fcfs']:.3f} | {r['preemptions_mean']:.2f} | "
                     f"{r['evictions_mean']:.3f} | {r['displacements_mean']:.3f} | {r['stall_share']:.3f} | "
                     f"{r['kv_util_mean']:.2f} | {r['ttft_mean_s']:.2f} | {r['jct_p99_s']:,.1f} |")
    return "\n".join(lines)


def done_when_table(rows: pl.DataFrame, where: str) -> str:
    lines = [f"| {where}: load (req/s) | FCFS req/s | worst scheduler | its req/s | worst vs FCFS | all ≥ 0.95 |",
             "|---|---|---|---|---|---|"]
    for scale, part in rows.group_by("rate_scale", maintain_order=True):
        worst = part.sort("vs_fcfs").row(0, named=True)
        ok = "yes" if worst["vs_fcfs"] >= 0.95 else "NO"
        lines.append(f"| {scale[0]:g} ({worst['offered_rps']:.2f}) | {worst['fcfs_rps']:.2f} | {worst['scheduler']} | "
                     f"{worst['throughput_rps']:.2f} | {worst['vs_fcfs']:.3f} | {ok} |")
    return "\n".join(lines)


def plot(rows: pl.DataFrame, img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for metric, label, name, log in [("jct_mean_s", "mean JCT (s)", "admission_jct.png", True),
                                     ("vs_fcfs", "sustained throughput / FCFS's", "admission_throughput.png", False)]:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True, sharey=True)
        for r, pre in enumerate(PREEMPTION):
            for c, adm in enumerate(ADMISSION):
                ax = axes[r][c]
                for sched in REPORTED:
                    part = rows.filter((pl.col("preemption") == pre) & (pl.col("admission") == adm)
                                       & (pl.col("scheduler") == sched)).sort("offered_rps")
                    ax.plot(part["offered_rps"], part[metric], marker="o", label=sched)
                ax.set_title(f"{pre} preemption, {adm} admission")
                if log:
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
                if r == 1:
                    ax.set_xlabel("offered load (req/s)")
                if c == 0:
                    ax.set_ylabel(label)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        img.mkdir(parents=True, exist_ok=True)
        fig.savefig(img / name, dpi=110)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rates", default="0.6,0.8,1", help="multiples of 9 req/s")
    parser.add_argument("--azure-rates", default="1,2,2.25,2.5", help="loads of scenarios/azure-conv-load.toml")
    parser.add_argument("--out", type=Path, default=Path("results/batching-admission"))
    parser.add_argument("--img", type=Path, default=Path("docs/img/batching"))
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    trace = out / f"synth-{args.requests}.parquet"
    lapsbench("trace", "synth", "--requests", str(args.requests), "--rate", "9", "--arrival", "poisson",
              "--output-lengths", "geometric:mean=220", "--prompt-lengths", "lognormal:median=1020,sigma=1.0",
              "--seed", "1", "--out", str(trace))
    # part 1: the grid
    parts = []
    for pre in PREEMPTION:
        for adm in ADMISSION:
            name = f"{pre}-{adm}"
            toml = scenario(out / f"{name}.toml", trace, REPORTED, pre, adm, out / name)
            summary = with_fcfs_ratio(compare(toml, args.rates, out / f"{name}-compare"))
            parts.append(summary.with_columns(pl.lit(pre).alias("preemption"), pl.lit(adm).alias("admission")))
    rows = pl.concat(parts, how="diagonal_relaxed").select(
        "preemption", "admission", "rate_scale", "offered_rps", "scheduler", "throughput_rps", "vs_fcfs", "saturated",
        "jct_mean_s", "jct_p99_s", "ttft_mean_s", "preemptions_mean", "evictions_mean", "displacements_mean",
        "stall_share", "kv_util_mean")
    rows.write_csv(out / "grid.csv")
    plot(rows, args.img)
    # part 2: every built-in scheduler under the default admission rule
    from lapsbench.schedulers import registry

    every = ["fcfs", *sorted(set(registry()) - {"fcfs"})]
    top = args.rates.split(",")[-1]
    toml = scenario(out / "all-swap-guarded.toml", trace, every, "swap", "guarded", out / "all")
    case = with_fcfs_ratio(compare(toml, top, out / "all-compare"))
    azure = Path("scenarios/azure-conv-load.toml").read_text().split("[[scheduler]]")[0]
    # the copy lives in OUT: its trace path, relative to scenarios/, made absolute
    azure = azure.replace('path = "../traces/', f'path = "{Path("scenarios").resolve().parent / "traces"}/')
    azure_toml = out / "azure-conv-load-all.toml"
    azure_toml.write_text(azure + "".join(f'[[scheduler]]\nname = "{s}"\n' for s in every)
                          + f'[output]\ndir = "{out / "azure-all"}"\n')
    azure_rows = with_fcfs_ratio(compare(azure_toml, args.azure_rates, out / "azure-all-compare"))
    text = "\n\n".join([
        f"## The case ({args.requests:,} requests): mean JCT / sustained throughput ÷ FCFS's (\\* = saturated)",
        grid_table(rows), "## Details", detail_table(rows),
        "## Done-when: every built-in scheduler, guarded admission (default), swap", done_when_table(case, "case"),
        detail_table(case.with_columns(pl.lit("swap").alias("preemption"), pl.lit("guarded").alias("admission"))),
        done_when_table(azure_rows, "azure-conv-load"),
        detail_table(azure_rows.with_columns(pl.lit("swap").alias("preemption"), pl.lit("guarded").alias("admission"))),
    ]) + "\n"
    (out / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
