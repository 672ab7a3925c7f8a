"""A size-based scheduler written outside lapsbench: shortest *predicted* remaining output first.

Each request's total output length is predicted once, at arrival, by a log-normal predictor with a
`median_error` relative error (lapsbench.models.predictors, the same draws as the built-in schedulers get for the
same seed); the request with the fewest predicted tokens left runs next, preempting at step boundaries.
With median_error = 0 this is the built-in `srpt`.

Run it: lapsbench run examples/schedulers/shortest_predicted.toml
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from lapsbench.models.predictors import predict_lengths
from lapsbench.schedulers import Scheduler


class ShortestPredictedPacked(NamedTuple):
    predicted: np.ndarray  # float64 per request: predicted total output tokens


@dataclass(frozen=True)
class ShortestPredicted(Scheduler):
    median_error: float = 0.25  # a parameter: set it in the scenario, `median_error = 0.5`

    name = "shortest-predicted"
    preemptive = True

    def __post_init__(self) -> None:
        if not self.median_error >= 0:
            raise ValueError(f"median_error: {self.median_error!r} — expected a number >= 0")

    def pack(self, state) -> ShortestPredictedPacked:
        """Run once per run, in Python: whatever the compiled key needs, as named arrays."""
        predicted = predict_lengths(state, "lognormal", self.median_error).tokens
        return ShortestPredictedPacked(np.ascontiguousarray(predicted, np.float64))

    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        """Lower runs first: predicted tokens left (ties: arrival order)."""
        return max(P.predicted[i] - R.generated[i], 1.0)
