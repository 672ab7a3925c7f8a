"""Helpers shared by the paper schedulers: service units, exact horizons, predictor parameters, and the
true-future oracle (for srpt-sd and SSJF's starvation guard)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from lapsbench.costmodel import CostModel, sd_step_s
from lapsbench.errors import LapsbenchError
from lapsbench.policies.las import attained  # noqa: F401  (service measured in steps, tokens or seconds)
from lapsbench.predictors import Prediction, check_length_params, predict_lengths, quantile_cuts
from lapsbench.state import EngineState

UNITS = ("seconds", "steps", "tokens")
MARGIN = 1e-9


def batch1_prefill_s(cost: CostModel, k: int, prompt: np.ndarray) -> np.ndarray:
    """Batch-1 first (prefill) step time of prompts of the given lengths, from the cost profile."""
    prompt = np.asarray(prompt, np.int64)
    z = np.zeros_like(prompt)
    return cost.prefill_s(np.ones_like(prompt), prompt, prompt * prompt, z, z, with_draft=k > 0)


def prefill_step_s(state: EngineState, idx: np.ndarray) -> np.ndarray:
    """Batch-1 first (prefill) step time of requests `idx`, from the cost profile."""
    return batch1_prefill_s(state.cost, state.k, state.prompt_tokens[idx])


def decode_step_s(state: EngineState, context: np.ndarray) -> np.ndarray:
    """Batch-1 speculative step time (k drafts + one verify) at the given contexts."""
    context = np.asarray(context, np.int64)
    return sd_step_s(state.cost, state.k, np.ones_like(context), context)


def max_step_s(state: EngineState, r: int) -> float:
    """An upper bound of request r's batch-1 step time from now on: decode cost grows with the context, so
    the step at the full context (prompt + output) bounds it; a first step is its prefill. Plus 1 ns: the
    engine rounds each step to whole nanoseconds. Computed once for every request (vectorised), then looked up."""
    bound = state.cache.get("max_decode_s")
    if bound is None:
        everyone = np.arange(state.n)
        bound = decode_step_s(state, state.prompt_tokens + state.output_tokens)
        state.cache["max_decode_s"] = bound
        state.cache["max_first_s"] = np.maximum(bound, prefill_step_s(state, everyone))
    c = float(state.cache["max_first_s"][r] if state.steps[r] == 0 else bound[r])
    return c + 1e-9


def steps_before_crossing(state: EngineState, r: int, unit: str, budget: float) -> int:
    """How many steps request r can run such that, before each of them, its attained service (in `unit`)
    has grown by less than `budget` since now — i.e. a horizon after which a threshold `budget` away may
    have been crossed, and not before. Always >= 1 (exact: the crossing can only happen at the last step)."""
    if budget <= 0:
        return 1
    if unit == "steps":
        return max(1, int(np.ceil(budget)))
    if unit == "tokens":
        return max(1, int(np.ceil(budget / (state.k + 1))))  # each step adds at most k + 1 tokens
    if state.steps[r] == 0:
        return 1
    c = max_step_s(state, r)
    # (h − 1)·c_max < budget guarantees no crossing before the h-th step.
    return max(1, int(np.floor(budget * (1 - MARGIN) / c)) + 1) if c > 0 else 1


def geometric_bounds(base: float, ratio: float, levels: int) -> np.ndarray:
    """Cumulative attained-service bounds B_1..B_{levels-1} of a ladder with quanta base·ratio^ℓ."""
    quanta = base * ratio ** np.arange(max(levels - 1, 0))
    return np.cumsum(quanta)


@dataclass
class PredictorParams:
    """Length-predictor parameters shared by every scheduler that predicts lengths (predictors.py)."""

    predictor: str = "oracle"
    predictor_median_error: float = 0.25
    predictor_cuts: tuple = ()   # () = the workload's own, from held-out requests (derive)
    predictor_exact: float = 0.60
    predictor_within_one: float = 0.93
    predictor_tau: float = 0.6

    def check_predictor(self) -> None:
        self.predictor_cuts = check_length_params("scheduler", self.predictor, self.predictor_median_error,
                                                  tuple(self.predictor_cuts), self.predictor_exact,
                                                  self.predictor_within_one, self.predictor_tau)

    def derive(self, state: EngineState, held_out: np.ndarray | None = None) -> dict:
        """A bucketed predictor without cuts gets the workload's own: quantile cuts of the held-out output
        lengths (requests the run does not score); without any, of the scored ones, with a warning."""
        if self.predictor != "bucketed" or self.predictor_cuts:
            return {}
        if held_out is None or not len(held_out):
            warn("scheduler.predictor_cuts: no requests outside the scored window to cut buckets on; the cuts "
                 "come from the scored requests themselves (in-sample)")
            held_out = state.output_tokens
        return {"predictor_cuts": list(quantile_cuts(held_out))}

    def predict(self, state: EngineState) -> Prediction:
        return predict_lengths(state, self.predictor, self.predictor_median_error, tuple(self.predictor_cuts),
                               self.predictor_exact, self.predictor_within_one, self.predictor_tau)


def need_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise LapsbenchError(f"scheduler.{name}: {value!r} — expected a number >= 0")


def need_positive(name: str, value: float) -> None:
    if not value > 0:
        raise LapsbenchError(f"scheduler.{name}: {value!r} — expected a number > 0")


def need_increasing(name: str, values: object) -> tuple[float, ...]:
    """A list of thresholds: finite numbers > 0, strictly increasing (empty = derived by the policy)."""
    items = list(values) if isinstance(values, (list, tuple)) else None
    ok = items is not None and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0 for v in items
    ) and all(a < b for a, b in zip(items, items[1:], strict=False))
    if not ok:
        raise LapsbenchError(f"scheduler.{name}: {values!r} — expected strictly increasing numbers > 0")
    return tuple(float(v) for v in items)  # type: ignore[union-attr]


def warn(message: str) -> None:
    """One warning line on stderr (the run goes on)."""
    print(f"lapsbench: warning: {message}", file=sys.stderr)


def need_ratio(name: str, value: float) -> None:
    """A geometric ladder's growth factor: quanta must not shrink down the ladder."""
    if not value >= 1:
        raise LapsbenchError(f"scheduler.{name}: {value!r} — expected a number >= 1")


def need_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LapsbenchError(f"scheduler.{name}: {value!r} — expected one of {list(choices)}")


class TrueFuture:
    """Each request's true steps at batch size 1 — the engine's own step table (lapsbench.steptable), drawn
    from the acceptance process's future draws and priced by the cost profile — so the true remaining
    time of a request that has taken s steps is its total service minus the service of its first s steps
    (integer nanoseconds, exact)."""

    def __init__(self, state: EngineState) -> None:
        from lapsbench.steptable import build_step_table

        if state.acceptance is None:
            raise LapsbenchError("scheduler: this oracle needs the acceptance process (EngineState.acceptance); "
                                 "the runner sets it")
        self.table = state.step_table if state.step_table is not None else build_step_table(
            state.request_id, state.prompt_tokens, state.output_tokens, state.k, state.cost, state.acceptance)
        self.total_ns = self.table.service_ns()

    def remaining_ns(self, state: EngineState, idx: np.ndarray) -> np.ndarray:
        s = np.minimum(state.steps[idx], self.table.n_steps[idx])
        done_ns = np.where(s > 0, self.table.cum_ns[self.table.offset[idx] + s - 1], 0)
        return self.total_ns[idx] - done_ns

    def service_s(self, idx: np.ndarray) -> np.ndarray:
        from lapsbench.steptable import NS

        return self.total_ns[idx] / NS
