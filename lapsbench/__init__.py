"""lapsbench: trace-replay benchmark for scheduling speculative-decoding LLM requests."""

import hashlib
import os
from pathlib import Path

__version__ = "0.1.0"


def _numba_cache_dir() -> None:
    """Compiled engines are cached by numba, which checks only the source file of each cached function, not
    the modules it inlines (the policy kernels, the step pricing): a cache directory per hash of the package
    sources makes any change compile afresh. Set before numba is imported; NUMBA_CACHE_DIR overrides."""
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    digest = hashlib.sha256(__version__.encode())
    for source in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(source.read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ["NUMBA_CACHE_DIR"] = str(base / "lapsbench" / "numba" / digest.hexdigest()[:16])


_numba_cache_dir()
