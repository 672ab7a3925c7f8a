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

    def emitted(self, req: np.ndarray, step: np.ndarray, position: np.ndarray) -> np.ndarray:
        if self.k == 0:
            return np.ones(np.shape(req), dtype=np.int64)
        u = rng.uniform(self.key, self.request_id[req], step)
        alpha = self.alpha[req]
        with np.errstate(divide="ignore", invalid="ignore"):
            accepted = np.floor(np.log(u) / np.log(alpha))
        accepted = np.where(alpha > 0, np.minimum(accepted, self.k), 0)
        return accepted.astype(np.int64) + 1


def mean_tokens_per_step(alpha: float, k: int) -> float:
    """Closed form for the geometric acceptance model: E[tokens] = (1 − α^(k+1)) / (1 − α)."""
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
