"""Peak memory of `lapsbench trace import` on an Azure-2024-shaped CSV (default 27.3 M rows, ~1.1 GB):
timestamps with a UTC offset, some with and some without fractional seconds. The file is generated in a
temporary directory (never committed); the import runs in a subprocess so its peak RSS is measured alone.

    python benchmarks/bench_import_memory.py [--rows N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1_000_000


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write `rows` requests at ~45/s over a week-like span, 1 in 20 on a whole second (no fraction)."""
    rng = np.random.default_rng(seed)
    start_us = int(datetime(2024, 5, 12).timestamp() * 1e6)
    with open(path, "wb") as fh:
        fh.write(b"TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for lo in range(0, rows, CHUNK):
            n = min(CHUNK, rows - lo)
            gaps = rng.exponential(22_000, n).astype(np.int64)
            whole = rng.random(n) < 0.05
            us = start_us + np.cumsum(gaps)
            us[whole] -= us[whole] % 1_000_000
            us = np.maximum(np.maximum.accumulate(us), start_us)  # rounding down never goes before the last chunk
            start_us = int(us[-1])
            ts = pl.Series(us).cast(pl.Datetime("us"))
            text = pl.when(pl.Series(us % 1_000_000 == 0)).then(ts.dt.to_string("%Y-%m-%d %H:%M:%S")) \
                .otherwise(ts.dt.to_string("%Y-%m-%d %H:%M:%S%.6f"))
            pl.DataFrame({"TIMESTAMP": pl.select(text + "+00:00").to_series(),
                          "ContextTokens": rng.integers(1, 8000, n), "GeneratedTokens": rng.integers(1, 1000, n)}
                         ).write_csv(fh, include_header=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=27_300_000, help="rows of the generated CSV")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, out = Path(tmp) / "azure2024_shaped.csv", Path(tmp) / "out.parquet"
        t = time.perf_counter()
        generate(csv_path, args.rows)
        size_gb = csv_path.stat().st_size / 1e9
        print(f"generated {args.rows:,} rows, {size_gb:.2f} GB in {time.perf_counter() - t:.0f} s")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lapsbench", "trace", "import", str(csv_path), "--out", str(out)],
                       cwd=ROOT, check=True)
        wall = time.perf_counter() - t
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        rows = pl.scan_parquet(out).select(pl.len()).collect().item()
        print(f"import: {rows:,} rows, {out.stat().st_size / 1e6:.0f} MB Parquet, peak RSS {peak_mb:,.0f} MiB, "
              f"{wall:.1f} s")


if __name__ == "__main__":
    main()
