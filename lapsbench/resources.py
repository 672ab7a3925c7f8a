"""The files that ship inside the package, under lapsbench/data/: cost profiles (`profiles/`), traces
(`traces/`), example scenarios (`scenarios/`), acceptance records (`acceptance/`) and length tables
(`lengths/`). A checkout reaches them through the links `profiles`, `traces`, `scenarios` and `data` at
its root; an installed package through these paths, whatever the working directory."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
PROFILES_DIR = DATA_DIR / "profiles"
SCENARIOS_DIR = DATA_DIR / "scenarios"
ACCEPTANCE_FILE = DATA_DIR / "acceptance" / "specdecode_bench_llama31_8b_h100.parquet"


def is_shipped(path: str | Path) -> bool:
    """True for a file or directory inside the package's data folder (links followed)."""
    return Path(path).resolve().is_relative_to(DATA_DIR)
