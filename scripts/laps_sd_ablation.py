"""LAPS-SD ablation on a LAPS-SD-like scenario (docs/reproduction.md): which of LAPS-SD's ingredients help
or hurt on this workload. Each variant changes one documented parameter; nothing here is a tuned default.

    python scripts/laps_sd_ablation.py scenarios/papers/laps_sd_chat.toml [--replications 3]
"""

import argparse
import dataclasses

import numpy as np
import polars as pl

from lapsbench.config.scenario import SchedulerSpec, load_scenario
from lapsbench.results.metrics import ci95_halfwidth
from lapsbench.run.runner import run_scenario

VARIANTS = [
    ("fcfs", "fcfs", {}),
    ("laps-sd (defaults)", "laps-sd", {}),
    ("ladder in output tokens", "laps-sd", {"unit": "tokens"}),
    ("oracle lengths", "laps-sd", {"predictor": "oracle"}),
    ("no ladder (num_queues = 1)", "laps-sd", {"num_queues": 1}),
    ("no ladder, oracle lengths", "laps-sd", {"num_queues": 1, "predictor": "oracle"}),
    ("srpt-sd (oracle bound)", "srpt-sd", {}),
]

parser = argparse.ArgumentParser()
parser.add_argument("scenario")
parser.add_argument("--replications", type=int, default=3)
args = parser.parse_args()
base = load_scenario(args.scenario)
specs = tuple(SchedulerSpec(name, label, params) for label, name, params in VARIANTS)
req = run_scenario(dataclasses.replace(base, replications=args.replications, scheduler=specs)).requests
print(f"{base.name}, {args.replications} replications: mean JCT (s) ± 95% CI, vs fcfs paired")
fcfs = req.filter(req["scheduler"] == "fcfs").group_by("replication").agg(j=pl.col("jct_s").mean())
fcfs = dict(zip(fcfs["replication"].to_list(), fcfs["j"].to_list(), strict=True))
for label, _, params in VARIANTS:
    g = req.filter(req["scheduler"] == label).group_by("replication").agg(j=pl.col("jct_s").mean())
    j = np.array(g["j"].to_list())
    rel = np.array([1 - v / fcfs[r] for r, v in zip(g["replication"].to_list(), j, strict=True)])
    print(f"| {label} | `{params}` | {j.mean():.3f} ± {ci95_halfwidth(j):.3f} | {100 * rel.mean():+.1f}% ± "
          f"{100 * ci95_halfwidth(rel):.1f} |")
