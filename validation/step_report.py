"""Step-level tables of docs/validation.md: how a profile prices every logged step of some replays.

    python validation/step_report.py PROFILE.toml REPLAY_DIR [REPLAY_DIR ...]

Prints two Markdown tables: (1) per replay, scheduler and phase (decode-only, prefill-only, mixed steps), the
profile's bias (Σ predicted / Σ real wall time − 1), MAPE and worst APE against the step log's `wall_ms`;
(2) per replay and scheduler, decode-only steps' mean wall and GPU time and the host time between them
(wall_ms − gpu_ms: bookkeeping, input copies, launches and the policy's decision).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.calibrate.step_fit import price_steps
from lapsbench.calibrate.steplog import STEP_PHASES, read_steplog, step_phase
from lapsbench.models.cost import load_profile_file


def main(profile: str, replays: list[str]) -> None:
    cost = load_profile_file(Path(profile))
    logs = {d.rstrip("/").removeprefix("validation/h200/"): read_steplog(Path(d) / "steps.parquet") for d in replays}
    print("| replay | scheduler | phase | steps | bias | MAPE | worst APE | real ms (mean) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, log in logs.items():
        pred, wall, phase = price_steps(cost, log), log["wall_ms"].to_numpy(), step_phase(log)
        sched = log["scheduler"].to_numpy()
        for s in [*dict.fromkeys(sched), "all"]:
            for p in STEP_PHASES:
                r = (phase == p) & ((sched == s) if s != "all" else True)
                if not r.any():
                    continue
                ape = np.abs(pred[r] / wall[r] - 1)
                print(f"| {name} | {s} | {p} | {r.sum()} | {pred[r].sum() / wall[r].sum() - 1:+.1%} | "
                      f"{ape.mean():.1%} | {ape.max():.0%} | {wall[r].mean():.2f} |")
    print()
    print("| replay | scheduler | decode steps | mean batch | wall ms | GPU ms | host ms (wall − GPU) |")
    print("|---|---|---|---|---|---|---|")
    for name, log in logs.items():
        dec = log.filter(pl.col("prefill_requests") == 0)
        g = dec.group_by("scheduler", maintain_order=True).agg(
            pl.len(), pl.col("decode_requests").mean(), pl.col("wall_ms").mean(), pl.col("gpu_ms").mean(),
            (pl.col("wall_ms") - pl.col("gpu_ms")).mean().alias("host"))
        for s, n, b, w, gpu, host in g.iter_rows():
            print(f"| {name} | {s} | {n} | {b:.1f} | {w:.2f} | {gpu:.2f} | {host:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
