"""The worst held-out steps of a step-log fit, per phase (docs/validation.md §0.10):

    python validation/worst_steps.py PROFILE.toml STEPS.parquet [STEPS.parquet ...] [--top N]

Takes the held-out split `calibrate fit --seed 0 --test-frac 0.25` made of the same logs, in the same order
(seeded permutation of the concatenated log), prices every held-out step with the profile and prints, per phase,
how many are over 10% and the N worst: scheduler, step, wall / GPU / priced ms, error, prefills and their chunks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.calibrate.step_fit import price_steps
from lapsbench.calibrate.steplog import read_steplog, step_phase
from lapsbench.models.cost import load_profile_file


def main(profile: str, logs: list[str], top: int) -> None:
    cost = load_profile_file(Path(profile))
    log = pl.concat([read_steplog(Path(p)) for p in logs], how="diagonal")
    t = log["wall_ms"].to_numpy()
    err = price_steps(cost, log) / t - 1
    test = np.random.default_rng(0).permutation(log.height)[: max(1, int(round(0.25 * log.height)))]
    phase = step_phase(log)
    for name in ("decode", "prefill", "mixed"):
        held = test[phase[test] == name]
        if held.size == 0:
            continue
        print(f"\n{name}: {int((np.abs(err[held]) > 0.10).sum())} of {held.size} held-out steps over 10%")
        for i in held[np.argsort(-np.abs(err[held]))][:top]:
            r = log.row(int(i), named=True)
            print(f"  {r['scheduler']} step {r['step']}: wall {r['wall_ms']:.2f} ms, GPU {r.get('gpu_ms') or 0:.2f}, "
                  f"priced {t[i] * (1 + err[i]):.2f}, error {err[i]:+.1%}; {r['decode_requests']} decoding, "
                  f"prefills {r['prefill_chunks'] if r['prefill_chunks'] is not None else r['prefill_tokens']}")


if __name__ == "__main__":
    args = sys.argv[1:]
    n = 3
    if "--top" in args:
        k = args.index("--top")
        n = int(args[k + 1])
        args = args[:k] + args[k + 2:]
    if len(args) < 2:
        sys.exit("usage: python validation/worst_steps.py PROFILE.toml STEPS.parquet [STEPS.parquet ...] [--top N]")
    main(args[0], args[1:], n)
