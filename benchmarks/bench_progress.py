"""What the progress bar costs: `lapsbench run` in a terminal (a pseudo-terminal: rich draws its bars) against
the same command piped (no bars), whole process, for the README quickstart and a 10^6-request
batch-1 replay (Azure-conv lengths, Poisson arrivals at load 0.8 on h100-llama2-7b, k = 4, α = 0.7; fcfs and
las). Each command runs once first to warm numba's cache (this measures progress, not compilation), then
`--repeats` times in a terminal and piped, alternately; prints the medians of the wall time and of the CPU
time (user + system, every thread: what the bar's threads cost, less sensitive to other load on the
machine than wall time), their terminal / piped ratios, and whether every run wrote the same
requests.parquet.

    python benchmarks/bench_progress.py [--requests 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import workload  # noqa: E402

from lapsbench.models.cost import load_profile_file  # noqa: E402

REPLAY = """name = "replay"
seed = 1
replications = 1
[trace]
path = "{trace}"
[model]
profile = "h100-llama2-7b"
[speculation]
k = 4
acceptance = {{ kind = "fixed", alpha = 0.7 }}
[[scheduler]]
name = "fcfs"
[[scheduler]]
name = "las"
"""


def timed(cmd: list[str], terminal: bool) -> tuple[float, float]:
    """Wall time and CPU time (user + system, all threads) of `cmd`: with a 120x40 pseudo-terminal as stdin,
    stdout and stderr (its output read and dropped, as a terminal would draw it), or with its output to a
    file (not a terminal: as piped)."""
    start = time.perf_counter()
    if terminal:
        controller, tty = pty.openpty()
        fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc = subprocess.Popen(cmd, stdin=tty, stdout=tty, stderr=tty, cwd=REPO,
                                env={**os.environ, "TERM": "xterm-256color"})
        os.close(tty)
        while True:
            try:
                if not os.read(controller, 65536):
                    break
            except OSError:  # the terminal closed: the process has exited
                break
        os.close(controller)
    else:
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)}: exit {os.waitstatus_to_exitcode(status)}"
                         f"{' in a terminal' if terminal else ''}")
    return wall, usage.ru_utime + usage.ru_stime


def measure(name: str, scenario: Path, work: Path, repeats: int) -> tuple[float, float]:
    """Median terminal and piped times of `lapsbench run SCENARIO`; returns the (wall, CPU) ratios."""
    def cmd(tag: str) -> list[str]:
        return [sys.executable, "-m", "lapsbench", "run", str(scenario), "--out", str(work / f"{name}-{tag}")]

    timed(cmd("warm"), terminal=False)
    runs: dict[str, list[tuple[float, float]]] = {"terminal": [], "piped": []}
    for i in range(repeats):
        for tag in runs:
            runs[tag].append(timed(cmd(f"{tag}{i}"), terminal=tag == "terminal"))
    reference = pl.read_parquet(work / f"{name}-warm" / "requests.parquet")
    same = all(pl.read_parquet(work / f"{name}-{tag}{i}" / "requests.parquet").equals(reference)
               for tag in runs for i in range(repeats))
    ratios = []
    for kind, col in (("wall", 0), ("CPU", 1)):
        term = statistics.median(r[col] for r in runs["terminal"])
        pipe = statistics.median(r[col] for r in runs["piped"])
        ratios.append(term / pipe)
        print(f"{name} {kind}: terminal {term:.2f} s ({', '.join(f'{r[col]:.2f}' for r in runs['terminal'])}), "
              f"piped {pipe:.2f} s ({', '.join(f'{r[col]:.2f}' for r in runs['piped'])}); "
              f"terminal / piped = {term / pipe:.3f} ({(term / pipe - 1) * 100:+.1f}%)", flush=True)
    print(f"{name}: identical requests.parquet in every run: {'yes' if same else 'NO'}", flush=True)
    return ratios[0], ratios[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests of the batch-1 replay")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-progress-") as tmp:
        work = Path(tmp)
        cost = load_profile_file(REPO / "profiles" / "h100-llama2-7b.toml")
        ids, arrival, prompt, output, rate, _ = workload(args.requests, 0.8, 4, 0.7, cost)
        trace = work / "replay.parquet"
        pl.DataFrame({"request_id": ids, "arrival_s": arrival, "prompt_tokens": prompt,
                      "output_tokens": output}).write_parquet(trace)
        replay = work / "replay.toml"
        replay.write_text(REPLAY.format(trace=trace))
        print(f"median of {args.repeats}, whole process, numba cache warm; replay: {args.requests:,} "
              f"requests at {rate:.3f} req/s", flush=True)
        ratios = [measure("quickstart", REPO / "scenarios" / "quickstart.toml", work, args.repeats),
                  measure(f"replay-{args.requests}", replay, work, args.repeats)]
    for kind, col in (("wall", 0), ("CPU", 1)):
        print(f"worst terminal overhead, {kind} time: {(max(r[col] for r in ratios) - 1) * 100:+.1f}% (target <= +2%)")


if __name__ == "__main__":
    main()
