"""A scheduler that reads the acceptance observed so far: acceptance-weighted shortest remaining time.

At batch size 1 a speculative step costs about the same whoever runs it, but a request whose drafts are
accepted more often finishes its remaining tokens in fewer steps. This scheduler ranks by the estimated
remaining *steps*, predicted tokens left / (1 + k·â), where â is the request's acceptance observed so far
(accepted draft tokens / drafted ones), smoothed towards `prior_mean` with a weight of `prior_drafts`
draft tokens so that a request's first steps do not swing it. Preemptive at step boundaries.

Run it: lapsbench run examples/schedulers/acceptance_weighted.toml
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from lapsbench.models.predictors import predict_lengths
from lapsbench.schedulers import Scheduler


class AcceptanceWeightedPacked(NamedTuple):
    k: int                 # draft tokens per speculative step
    prior_mean: float
    prior_drafts: float
    predicted: np.ndarray  # float64: predicted total output tokens


@dataclass(frozen=True)
class AcceptanceWeighted(Scheduler):
    median_error: float = 0.25
    prior_mean: float = 0.5
    prior_drafts: float = 20.0

    name = "acceptance-weighted"

    def __post_init__(self) -> None:
        if not 0 <= self.prior_mean <= 1:
            raise ValueError(f"prior_mean: {self.prior_mean!r} — expected a number in [0, 1]")
        if not self.prior_drafts >= 0:
            raise ValueError(f"prior_drafts: {self.prior_drafts!r} — expected a number >= 0")

    def pack(self, state) -> AcceptanceWeightedPacked:
        predicted = predict_lengths(state, "lognormal", self.median_error).tokens
        return AcceptanceWeightedPacked(state.k, float(self.prior_mean), float(self.prior_drafts),
                                        np.ascontiguousarray(predicted, np.float64))

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        # accepted draft tokens: every decode step emits one token of its own plus the accepted drafts; the
        # prefill step emits the first token
        accepted = max(R.generated[i] - 1 - R.decode_steps[i], 0)
        weight = R.drafted[i] + P.prior_drafts
        a = (accepted + P.prior_mean * P.prior_drafts) / weight if weight > 0 else P.prior_mean
        left = max(P.predicted[i] - R.generated[i], 1.0)
        return left / (1.0 + P.k * a)
