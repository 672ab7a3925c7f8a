"""The two ablation profiles of docs/validation.md §0.9, fitted from call 1's calibration window:

    python validation/ablation_fits.py

- validation/lease-chunks/ablation-sum-cached/profile.toml: the step-log prefill model with the features it had
  before §0.9 (Σ cached tokens as a feature of its own: calibrate.forward.FORWARD_FEATURES);
- validation/lease-chunks/ablation-fcfs-calib/profile.toml: today's features, from the fcfs run of calib-cb64
  only (its las run left out; written beside it as steps.parquet).
Simulate and compare each as scripts/validate_same_call.sh does, with --set model.profile=THAT_PROFILE.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

import lapsbench.calibrate.step_fit as step_fit
from lapsbench.calibrate.fit import fit_profile
from lapsbench.calibrate.forward import FORWARD_FEATURES
from lapsbench.calibrate.steplog import METADATA_KEY

CALIB = Path("validation/h200-chunks/cb64/calib-cb64/steps.parquet")
OUT = Path("validation/lease-chunks")


def fit(steps: Path, out: Path, note: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fit_profile(None, out, "llama3-8b", ["llama-68m"], None, "NVIDIA H200", None, None, [], 0.25, 0, note, [steps],
                batch_sizes=(1, 2, 4, 8, 16, 32, 64), span_multiple=256)


def main() -> None:
    today = step_fit.STEP_PREFILL_FEATURES
    step_fit.STEP_PREFILL_FEATURES = FORWARD_FEATURES
    try:
        fit(CALIB, OUT / "ablation-sum-cached" / "profile.toml", "ablation: prefill features with Σ cached")
    finally:
        step_fit.STEP_PREFILL_FEATURES = today
    fcfs = OUT / "ablation-fcfs-calib" / "steps.parquet"  # the fcfs run of calib-cb64, as its own log
    fcfs.parent.mkdir(parents=True, exist_ok=True)
    pl.read_parquet(CALIB).filter(pl.col("scheduler") == "fcfs").write_parquet(fcfs, metadata={METADATA_KEY: "1"})
    fit(fcfs, OUT / "ablation-fcfs-calib" / "profile.toml", "ablation: the fcfs run of calib-cb64 only")


if __name__ == "__main__":
    main()
