"""Counter-based random numbers: a uniform draw is a pure function of (key, request id, counter).

This is what makes common random numbers exact: the j-th speculative step of request r sees the same
draw under every scheduler, whatever order the engine happens to simulate steps in, and no per-request
generator objects are needed (a million requests cost one vectorised hash)."""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def stream_key(seed: int, replication: int, stream: int) -> np.uint64:
    """A 64-bit key for one random stream (e.g. acceptance, predictor noise) of one replication."""
    return np.uint64(np.random.SeedSequence([seed, replication, stream]).generate_state(1, np.uint64)[0])


def uniform(key: np.uint64, request_id: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Uniform draws in the open interval (0, 1), one per (request_id, counter) pair."""
    with np.errstate(over="ignore"):
        rid = np.asarray(request_id, dtype=np.int64).view(np.uint64)  # views: no copies
        ctr = np.asarray(counter, dtype=np.int64).view(np.uint64)
        x = _splitmix64(_splitmix64(key ^ rid) ^ (ctr * _M2))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


class Streams:
    """Stream numbers, fixed forever so results stay reproducible across versions."""

    ACCEPTANCE = 1
    ACCEPTANCE_PARAMS = 2
    LENGTH_PREDICTOR = 3
    ACCEPTANCE_PREDICTOR = 4
    RANK_PREDICTOR = 5
    ACCEPTANCE_MAPPING = 6
