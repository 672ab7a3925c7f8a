"""Atomic file and directory writes, so a failed command never leaves half-written output behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o777 & ~_umask())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path)


def check_output(path: str | Path, what: str, kind: str = "file", marker: str | None = None,
                 inputs: tuple[str | Path, ...] = ()) -> bool:
    """Refuse an output path that cannot be written, before any work starts (LapsbenchError naming `what`,
    the flag or key that gave the path): a directory where a file goes or the reverse, a file in the way of
    its parent directories, a place where no file can be created, one of the command's `inputs`. An existing
    `kind = "dir"` output is replaced whole, so when `marker` is given a non-empty directory without that
    file (`meta.json` for results) is refused rather than deleted. Returns whether `path` holds something
    that will be replaced.

    Nothing is left behind: writability is probed with a temporary file in the nearest existing directory."""
    from lapsbench.errors import LapsbenchError

    target = Path(path)
    if any(target.resolve() == Path(p).resolve() for p in inputs):
        raise LapsbenchError(f"{what}: {target} — expected a path other than the input")
    exists = target.exists()
    if exists and kind == "file" and target.is_dir():
        raise LapsbenchError(f"{what}: {target} is a directory — expected a file path")
    if exists and kind == "dir" and not target.is_dir():
        raise LapsbenchError(f"{what}: {target} is a file — expected a directory")
    if exists and kind == "dir" and marker and any(target.iterdir()) and not (target / marker).is_file():
        raise LapsbenchError(f"{what}: {target} is a non-empty directory without {marker}, not earlier lapsbench "
                             f"results — expected a new directory or a results directory to replace")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LapsbenchError(f"{what}: {target} — {ancestor} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise LapsbenchError(f"{what}: {target} — cannot write in {ancestor} ({exc.strerror or exc})") from None
    return exists and (kind == "file" or any(target.iterdir()))
