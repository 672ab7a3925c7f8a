"""The files that ship inside the package, under lapsbench/data/: cost profiles (`profiles/`), traces
(`traces/`), example scenarios (`scenarios/`), acceptance records (`acceptance/`) and length tables
(`lengths/`). A checkout reaches them through the links `profiles`, `traces`, `scenarios` and `data` at
its root; an installed package through these paths, whatever the working directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from lapsbench.errors import LapsbenchError
from lapsbench.fsutil import atomic_file

DATA_DIR = Path(__file__).resolve().parent / "data"
PROFILES_DIR = DATA_DIR / "profiles"
SCENARIOS_DIR = DATA_DIR / "scenarios"
ACCEPTANCE_FILE = DATA_DIR / "acceptance" / "specdecode_bench_llama31_8b_h100.parquet"


def is_shipped(path: str | Path) -> bool:
    """True for a file or directory inside the package's data folder (links followed)."""
    return Path(path).resolve().is_relative_to(DATA_DIR)


def write_quickstart(directory: Path) -> list[Path]:
    """Copy the shipped quickstart scenario and the trace it replays into `directory`, in the same layout
    (scenarios/quickstart.toml, traces/...), so that `lapsbench run scenarios/quickstart.toml` works there
    as in a checkout; its profile is named, so it resolves from the package. Never overwrites a file."""
    from lapsbench.config.scenario import load_scenario

    scenario = load_scenario(SCENARIOS_DIR / "quickstart.toml")
    sources = [SCENARIOS_DIR / "quickstart.toml", scenario.resolve(scenario.trace.path)]
    targets = [directory / source.relative_to(DATA_DIR) for source in sources]
    for target in targets:
        if target.exists() or target.is_symlink():
            raise LapsbenchError(f"{target}: already exists — lapsbench init writes only new files; "
                                 "expected a new or empty folder")
    written: list[Path] = []
    try:
        for source, target in zip(sources, targets, strict=True):
            with atomic_file(target) as tmp:
                shutil.copyfile(source, tmp)
            written.append(target)
    except OSError as exc:
        for path in written:
            path.unlink()
        raise LapsbenchError(f"{directory}: cannot write the quickstart there ({exc})") from None
    return targets
