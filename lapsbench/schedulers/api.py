"""What a scheduler reads of the requests: one NamedTuple of per-request arrays, index = arrival order.

Every engine (batch 1, batched, and the step-by-step references in tests/) passes the same `RequestView` to
a scheduler's compiled `key` / `observe` / `prerank`; the engine owns the arrays and updates the progress
columns in place after each step. Fields are named so that a scheduler says `R.generated[i]`, not `S[3][i]`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RequestView(NamedTuple):
    arrival_s: np.ndarray       # float64: arrival time, seconds
    prompt_tokens: np.ndarray   # int64
    output_tokens: np.ndarray   # int64: the true output length (only oracles may read it)
    generated: np.ndarray       # int64: output tokens produced so far (the prefill step emits the first)
    steps: np.ndarray           # int64: forward steps taken part in, prefill steps included
    decode_steps: np.ndarray    # int64: speculative (decode) steps taken
    drafted: np.ndarray         # int64: draft tokens proposed so far, the sum of the K of each decode step
    attained_s: np.ndarray      # float64: GPU time of the steps taken part in
    last_service_s: np.ndarray  # float64: end of the last step served, or arrival if none
    done: np.ndarray            # bool


def empty_view(arrival_s: np.ndarray, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> RequestView:
    """A view of requests not yet served (progress columns zero, `last_service_s` = arrival)."""
    n = len(arrival_s)
    arrival = np.ascontiguousarray(arrival_s, np.float64)
    return RequestView(arrival, np.ascontiguousarray(prompt_tokens, np.int64),
                       np.ascontiguousarray(output_tokens, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64),
                       np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.float64), arrival.copy(),
                       np.zeros(n, np.bool_))
