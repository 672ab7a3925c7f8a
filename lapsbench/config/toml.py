"""The one TOML reader: tomllib (tomli before Python 3.11), and a file read whose failure is one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lapsbench.errors import LapsbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError
loads = tomllib.loads


def read_toml(path: Path, what: str, expected: str = "") -> dict[str, Any]:
    """The table of the TOML file `path` (a `what`: "scenario", "sweep", "profile"...); a missing, unreadable
    or malformed file raises LapsbenchError naming the file (`expected` follows the missing-file message)."""
    if not path.is_file():
        raise LapsbenchError(f"{path}: no such {what} file{expected}")
    try:
        return loads(path.read_text())
    except TOMLDecodeError as exc:
        raise LapsbenchError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LapsbenchError(f"{path}: cannot read {what}: {exc}") from None
