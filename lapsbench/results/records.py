"""The per-request records of a results directory (requests.parquet beside meta.json and scenario.toml),
read back for `compare DIR...`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from lapsbench.config.toml import TOMLDecodeError
from lapsbench.config.toml import loads as toml_loads
from lapsbench.errors import LapsbenchError

# Columns of requests.parquet that a comparison needs.
NEEDED = ("scheduler", "replication", "request_id", "arrival_s", "finish_s", "jct_s", "ttft_s", "tpot_s",
          "output_tokens")


def read_results_dir(d: Path) -> tuple[Path, dict[str, Any], dict[str, Any], pl.DataFrame]:
    """(the directory, its meta.json, its scenario.toml as a table, its requests): one line and exit 2 for
    anything that is not a readable results directory of lapsbench run or compare."""
    if not d.is_dir():
        raise LapsbenchError(f"{d}: not a directory — expected a scenario .toml or results directories")
    for name in ("requests.parquet", "meta.json", "scenario.toml"):
        if not (d / name).is_file():
            raise LapsbenchError(f"{d}: no {name} — expected a results directory written by lapsbench run or compare")
    try:
        meta = json.loads((d / "meta.json").read_text())
        raw = toml_loads((d / "scenario.toml").read_text())
        requests = pl.read_parquet(d / "requests.parquet")
    except (json.JSONDecodeError, TOMLDecodeError, OSError, pl.exceptions.PolarsError) as exc:
        raise LapsbenchError(f"{d}: unreadable results: {str(exc).splitlines()[0]}") from None
    needed = set(NEEDED)
    if not isinstance(meta, dict) or not needed <= set(requests.columns):
        raise LapsbenchError(f"{d}: requests.parquet lacks {sorted(needed - set(requests.columns))} — expected "
                             f"the per-request records of lapsbench run")
    return d, meta, raw, requests


def read_engine_stats(d: Path, raw: dict[str, Any]) -> pl.DataFrame | None:
    """engine_stats.parquet of a results directory (absent in results from before it existed)."""
    path = d / "engine_stats.parquet"
    if not path.is_file():
        return None
    stats = pl.read_parquet(path)
    if "rate_scale" not in stats.columns:
        stats = stats.with_columns(pl.lit(float(raw.get("trace", {}).get("rate_scale", 1.0)), pl.Float64)
                                   .alias("rate_scale"))
    return stats
