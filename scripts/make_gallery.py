"""Regenerate the plot gallery under docs/img/ (shown in docs/plots.md, docs/compare.md, docs/batching.md
and the README) with the lapsbench command line, exactly as a user would run it. From the repository root:

    python scripts/make_gallery.py                 # everything (~10 min on two cores; batching is most)
    python scripts/make_gallery.py run sweep       # only some entries (names below)

Each entry runs one command into a temporary directory and copies the listed files into docs/img/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
QUICKSTART = "scenarios/quickstart.toml"
CONV_LOAD = "scenarios/azure-conv-load.toml"
GREEDY = 'engine.admission="greedy"'

# name: (lapsbench arguments; --out and --quiet are added), {file in the results: path under docs/img}
GALLERY: dict[str, tuple[list[str], dict[str, str]]] = {
    "run": (["run", QUICKSTART, "--plots"],
            {"plots/jct_cdf.png": "run/jct_cdf.png", "plots/ttft_tpot.png": "run/ttft_tpot.png"}),
    "compare": (["compare", QUICKSTART, "--schedulers", "fcfs,sjf,las,srpt",
                 "--rates", "0.05,0.1,0.15,0.2,0.25,0.3,0.35"],
                {"plots/jct_cdf.png": "compare/jct_cdf.png", "plots/jct_vs_load.png": "compare/jct_vs_load.png",
                 "plots/ttft_tpot.png": "compare/ttft_tpot.png",
                 "comparison.md": "compare/azure_conv_sweep_comparison.md"}),
    "rps": (["compare", QUICKSTART, "--schedulers", "fcfs,las,laps-sd", "--rates", "0.5rps,1rps,1.5rps",
             "--set", "replications=1"],
            {"plots/ttft_tpot.png": "compare/ttft_tpot_rps_one_replication.png"}),
    "sweep": (["sweep", "scenarios/sweeps/load-vs-k.toml"],
              {"plots/trace.rate_scale.png": "sweep/trace.rate_scale.png",
               "plots/speculation.k.png": "sweep/speculation.k.png"}),
    # docs/batching.md §8 is measured with greedy admission (the engine's only rule when it was written)
    "batching": (["compare", CONV_LOAD, "--rates", "0.5,1,1.5,2,2.5,3,4", "--set", GREEDY],
                 {"plots/jct_vs_load.png": "batching/jct_vs_load.png", "plots/ttft_tpot.png": "batching/ttft_tpot.png",
                  "comparison.md": "batching/azure_conv_load_comparison.md"}),
    "batching-fine": (["compare", CONV_LOAD, "--rates", "2.25,2.75", "--no-plots", "--set", GREEDY],
                      {"comparison.md": "batching/azure_conv_load_fine_comparison.md"}),
}


def make(name: str, scratch: Path) -> None:
    """Run one gallery entry and copy its files into docs/img/."""
    args, files = GALLERY[name]
    out = scratch / name
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lapsbench", *args, "--out", str(out), "--quiet"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    for src, dst in files.items():
        target = IMG / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / src, target)
    print(f"{name}: {', '.join(files.values())} ({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"entries to regenerate: {', '.join(GALLERY)} (default: all)")
    names = parser.parse_args().names or list(GALLERY)
    if unknown := [n for n in names if n not in GALLERY]:
        parser.error(f"unknown entry {unknown[0]!r}; expected some of: {', '.join(GALLERY)}")
    with tempfile.TemporaryDirectory(prefix="lapsbench-gallery-") as scratch:
        for name in names:
            make(name, Path(scratch))


if __name__ == "__main__":
    main()
