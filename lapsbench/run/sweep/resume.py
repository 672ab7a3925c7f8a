"""A sweep's output directory across runs: one process at a time, the definition that wrote it, and the
temporaries a killed run left."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from lapsbench import __version__
from lapsbench.errors import LapsbenchError
from lapsbench.fsutil import atomic_file
from lapsbench.run.sweep.definition import Sweep
from lapsbench.run.sweep.points import definition_hash


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One sweep process per directory: stale temporaries may then be removed safely."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - no flock on Windows; run one sweep per directory there
            pass
        except OSError:
            raise LapsbenchError(f"{out}: another lapsbench sweep is writing this directory") from None
        yield


def claim(sweep: Sweep) -> None:
    """Record the definition in OUT/sweep.json, or refuse a directory written by a different definition."""
    digest = definition_hash(sweep)
    marker = sweep.out / "sweep.json"
    if marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise LapsbenchError(f"{marker}: unreadable; expected a lapsbench sweep record") from None
        if old.get("definition_sha256") != digest:
            raise LapsbenchError(f"{sweep.out}: written by a different sweep definition ({old.get('name')!r}, "
                                 f"{str(old.get('definition_sha256'))[:12]}); use another [sweep] out or --out")
        return
    record = {"name": sweep.name, "definition_sha256": digest, "source": str(sweep.source),
              "lapsbench_version": __version__,
              "axes": [{"key": a.key, "values": list(a.values), "dist": a.dist} for a in sweep.axes],
              "mode": sweep.mode, "capacity": dataclasses.asdict(sweep.capacity) if sweep.capacity else None}
    with atomic_file(marker) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")


def clean_stale(points_dir: Path) -> None:
    """Temporaries left by a killed run (atomic_dir names them `.<id>.*.tmp`)."""
    if points_dir.is_dir():
        for stale in list(points_dir.glob(".*.tmp")):  # listed first: deleting while scanning skips entries
            shutil.rmtree(stale, ignore_errors=True)
