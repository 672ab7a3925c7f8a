"""Small sweeps over a synthetic trace, shared by the sweep tests."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from lapsbench.trace.schema import write_trace
from lapsbench.trace.synth import synth_trace

AXES = """
[axes]
"trace.rate_scale" = [0.5, 0.8]
"speculation.k" = [0, 2]
"""


def write_sweep(tmp: Path, axes: str = AXES, n: int = 300, rate: float = 1.0, extra: str = "",
                name: str = "test-sweep", out: str = "out") -> Path:
    """A sweep file over a synthetic trace served by a fixed 10 ms step profile (mean service ≈ 1 s)."""
    trace = tmp / "trace.parquet"
    if not trace.exists():
        write_trace(synth_trace(n, rate, output="geometric:mean=100", prompt="fixed:1", seed=3), trace)
    path = tmp / f"{name}.toml"
    path.write_text(f"""
[scenario]
name = "base"
seed = 1
replications = 2
[scenario.trace]
path = "trace.parquet"
[scenario.model]
profile = {{ kind = "fixed", step_s = 0.01, draft_step_s = 0.001 }}
[scenario.speculation]
k = 2
acceptance = {{ kind = "fixed", alpha = 0.6 }}
[[scenario.scheduler]]
name = "fcfs"
[[scenario.scheduler]]
name = "las"

[sweep]
name = "{name}"
out = "{out}"
{axes}
{extra}
""")
    return path


def read_dataset(out: Path) -> pl.DataFrame:
    """The merged dataset in a canonical row order, for equality checks."""
    df = pl.scan_parquet(out / "dataset", hive_partitioning=True).collect()
    return df.sort(["point", "scheduler", "replication", "request_id"])


def read_summary(out: Path) -> pl.DataFrame:
    return pl.read_csv(out / "summary.csv").sort(["point", "scheduler"])
