"""The LAPS-SD headline table of docs/reproduction.md from `lapsbench run` results: per scheduler the mean
JCT (95% CI over replications) and LAPS-SD's paired change against it (negative = LAPS-SD lower).

    python scripts/laps_sd_table.py results/papers/laps_sd_chat [--subject laps-sd]
"""

import argparse

import numpy as np
import polars as pl

from lapsbench.metrics import ci95_halfwidth

parser = argparse.ArgumentParser()
parser.add_argument("results")
parser.add_argument("--subject", default="laps-sd")
args = parser.parse_args()
req = pl.read_parquet(f"{args.results}/requests.parquet")
per = req.group_by(["scheduler", "replication"], maintain_order=True).agg(pl.col("jct_s").mean().alias("jct"))
subject = dict(per.filter(pl.col("scheduler") == args.subject).select("replication", "jct").iter_rows())
print(f"| scheduler | mean JCT (s) ± 95% CI | {args.subject} vs it (paired) |")
print("|---|---|---|")
for (label,), g in per.group_by(["scheduler"], maintain_order=True):
    reps = g["replication"].to_list()
    j = g["jct"].to_numpy()
    change = np.array([subject[r] / v - 1 for r, v in zip(reps, j, strict=True)])
    print(f"| {label} | {j.mean():.2f} ± {ci95_halfwidth(j):.2f} | {100 * change.mean():+.1f}% ± "
          f"{100 * ci95_halfwidth(change):.1f} |")
