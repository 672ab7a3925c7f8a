"""How a profile prices the logged steps that prefill, by kind (docs/validation.md §0.9):

    python validation/prefill_steps.py PROFILE.toml REPLAY_DIR [REPLAY_DIR ...]

Prints one Markdown table per replay: steps grouped by number of prefills (4 = 4 or more), whether a chunk
follows cached tokens, and whether the step also decodes; per group the count, the bias (Σ predicted / Σ real
wall time − 1) and MAPE against the step log's `wall_ms`, and the mean prompt tokens per prefill.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from lapsbench.calibrate.step_fit import price_steps
from lapsbench.calibrate.steplog import read_steplog
from lapsbench.models.cost import load_profile_file


def main(profile: str, replays: list[str]) -> None:
    cost = load_profile_file(Path(profile))
    for replay in replays:
        log = read_steplog(Path(replay) / "steps.parquet")
        log = log.with_columns(pl.Series("pred", price_steps(cost, log))).filter(pl.col("prefill_requests") > 0)
        groups = log.group_by(pl.col("prefill_requests").clip(1, 4).alias("prefills"),
                              (pl.col("prefill_context_tokens") > 0).alias("after cached"),
                              (pl.col("decode_requests") > 0).alias("mixed")).agg(
            pl.len().alias("steps"), (pl.col("pred").sum() / pl.col("wall_ms").sum() - 1).alias("bias"),
            (pl.col("pred") / pl.col("wall_ms") - 1).abs().mean().alias("mape"),
            (pl.col("prefill_tokens") / pl.col("prefill_requests")).mean().alias("tokens")).sort(
            "prefills", "after cached", "mixed")
        print(f"\n{replay}\n\n| prefills | after cached | mixed | steps | bias | MAPE | tokens per prefill |")
        print("|---|---|---|---|---|---|---|")
        for r in groups.iter_rows(named=True):
            print(f"| {'4+' if r['prefills'] == 4 else r['prefills']} | {r['after cached']} | {r['mixed']} | "
                  f"{r['steps']} | {r['bias']:+.1%} | {r['mape']:.1%} | {r['tokens']:.0f} |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python validation/prefill_steps.py PROFILE.toml REPLAY_DIR [REPLAY_DIR ...]")
    main(sys.argv[1], sys.argv[2:])
