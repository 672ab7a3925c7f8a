"""Acceptance processes: how many tokens one speculative-decoding step emits for a request.

A step drafts `k` tokens; the target accepts a prefix of them and adds one token of its own, so a step
emits between 1 and k + 1 tokens (never past the request's output length — the engine caps that).
Every process answers `emitted(req, step, position)` vectorised: `req` indexes the workload, `step` is
the request's own decode-step counter (0 = first speculative step after prefill) and `position` the
number of tokens generated before the step. Draws depend only on (replication key, request id, step),
so every scheduler sees the same accepted-token sequence for a request (common random numbers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lapsbench import rng


@dataclass
class FixedAcceptance:
    """Each of the k drafts is accepted with probability α (per request) until the first rejection.

    Accepted drafts G satisfy P(G >= m) = α^m, drawn as G = floor(ln U / ln α) from one uniform U, capped
    at k. Mean tokens per step: (1 − α^(k+1)) / (1 − α)."""

    alpha: np.ndarray  # per request, in [0, 1)
    request_id: np.ndarray
    k: int
    key: np.uint64

    def __post_init__(self) -> None:
        alpha = np.asarray(self.alpha, np.float64)
        with np.errstate(divide="ignore"):
            log_alpha = np.log(alpha)
        # one α for everyone (the common case) → a scalar, saving a gather per draw
        self._log_alpha = log_alpha[0] if alpha.size and np.all(alpha == alpha[0]) else log_alpha

    def mean_tokens(self, req: np.ndarray) -> np.ndarray:
        """Expected tokens per step of each request (used only to size pre-drawing)."""
        return mean_tokens_per_step(self.alpha[req], self.k)

    def emitted(self, req: np.ndarray, step: np.ndarray, position: np.ndarray) -> np.ndarray:
        if self.k == 0:
            return np.ones(np.shape(req), dtype=np.int64)
        u = rng.uniform(self.key, self.request_id[req], step)
        log_alpha = self._log_alpha if np.ndim(self._log_alpha) == 0 else self._log_alpha[req]
        with np.errstate(divide="ignore", invalid="ignore"):
            accepted = np.floor(np.log(u) / log_alpha)  # α = 0: log α = −inf → −0 → 0 accepted
        np.minimum(accepted, self.k, out=accepted)
        return accepted.astype(np.int64) + 1


def mean_tokens_per_step(alpha, k: int):
    """Closed form for the geometric acceptance model: E[tokens] = (1 − α^(k+1)) / (1 − α)."""
    return (1.0 - np.asarray(alpha, np.float64) ** (k + 1)) / (1.0 - np.asarray(alpha, np.float64))
