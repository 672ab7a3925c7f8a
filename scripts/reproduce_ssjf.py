"""SSJF reproduction (docs/reproduction.md): scenarios/papers/ssjf_no_batching.toml at Poisson rates
lambda = 1..10 req/s; prints mean JCT, the JCT reduction and the thr25 ratio of SSJF (and oracle SJF) vs
FCFS, with 95% CIs over the 20 replications, plus sustained throughput. Run from the repository root:

    python scripts/reproduce_ssjf.py [--rates 1,2,5,10]
"""

import argparse
import dataclasses

from lapsbench.config.scenario import load_scenario
from lapsbench.results.paper_metrics import versus_baseline
from lapsbench.run.runner import run_scenario

parser = argparse.ArgumentParser()
parser.add_argument("--rates", default="1,2,3,4,5,6,7,8,9,10")
parser.add_argument("--scenario", default="scenarios/papers/ssjf_no_batching.toml")
args = parser.parse_args()
base = load_scenario(args.scenario)
print("| λ (req/s) | scheduler | mean JCT (s) | JCT reduction vs FCFS | thr25 (req/s) | thr25 ratio vs FCFS "
      "| sustained (req/s) |")
print("|---|---|---|---|---|---|---|")
for rate in (float(r) for r in args.rates.split(",")):
    s = dataclasses.replace(base, trace=dataclasses.replace(base.trace, synth={**base.trace.synth, "rate": rate}))
    table = versus_baseline(run_scenario(s).requests)
    for row in table.iter_rows(named=True):
        print(f"| {rate:g} | {row['scheduler']} | {row['jct_mean_s']:.1f} ± {row['jct_mean_s_ci']:.1f} "
              f"| {100 * row['jct_reduction']:.1f}% ± {100 * row['jct_reduction_ci']:.1f} "
              f"| {row['thr25']:.3f} ± {row['thr25_ci']:.3f} | {row['thr25_ratio']:.2f} ± {row['thr25_ratio_ci']:.2f} "
              f"| {row['sustained_rps']:.3f} ± {row['sustained_rps_ci']:.3f} |")
