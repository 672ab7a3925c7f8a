"""Helpers shared by the schedulers: service units, validation, predictor parameters, the true-future
oracle (srpt-sd, SSJF's starvation guard) and the multi-level-queue bookkeeping of mlfq / skip-join."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from lapsbench.errors import LapsbenchError
from lapsbench.models.cost import CostModel, sd_step_s
from lapsbench.models.predictors import Prediction, check_length_params, predict_lengths, quantile_cuts
from lapsbench.schedulers.jit import njit

UNITS = ("seconds", "steps", "tokens")
UNIT_STEPS, UNIT_TOKENS, UNIT_SECONDS = 0, 1, 2
UNIT_CODE = {"steps": UNIT_STEPS, "tokens": UNIT_TOKENS, "seconds": UNIT_SECONDS}


@njit(cache=True)
def attained(R, unit, i):
    """Request i's attained service in `unit` (a UNIT_* code): steps, output tokens or GPU seconds."""
    if unit == UNIT_STEPS:
        return float(R.steps[i])
    if unit == UNIT_TOKENS:
        return float(R.generated[i])
    return R.attained_s[i]


def batch1_prefill_s(cost: CostModel, k: int, prompt: np.ndarray) -> np.ndarray:
    """Batch-1 first (prefill) step time of prompts of the given lengths, from the cost profile."""
    prompt = np.asarray(prompt, np.int64)
    z = np.zeros_like(prompt)
    return cost.prefill_s(np.ones_like(prompt), prompt, prompt * prompt, z, z, with_draft=k > 0)


def decode_step_s(state, context: np.ndarray) -> np.ndarray:
    """Batch-1 speculative step time (k drafts + one verify) at the given contexts."""
    context = np.asarray(context, np.int64)
    return sd_step_s(state.cost, state.k, np.ones_like(context), context)


def geometric_bounds(base: float, ratio: float, levels: int) -> np.ndarray:
    """Cumulative attained-service bounds B_1..B_{levels-1} of a ladder with quanta base·ratio^ℓ."""
    quanta = base * ratio ** np.arange(max(levels - 1, 0))
    return np.cumsum(quanta)


def set_field(obj: object, name: str, value: object) -> None:
    """Normalise a parameter of a frozen scheduler in its own __post_init__."""
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class PredictorParams:
    """Length-predictor parameters shared by every scheduler that predicts lengths (predictors.py)."""

    predictor: str = "oracle"
    predictor_median_error: float = 0.25
    predictor_cuts: tuple = ()   # () = the workload's own, from held-out requests (derive)
    predictor_exact: float = 0.60
    predictor_within_one: float = 0.93
    predictor_tau: float = 0.6

    def check_predictor(self) -> None:
        set_field(self, "predictor_cuts", check_length_params(
            "scheduler", self.predictor, self.predictor_median_error, tuple(self.predictor_cuts),
            self.predictor_exact, self.predictor_within_one, self.predictor_tau))

    def derive(self, state, held_out: np.ndarray | None = None) -> dict:
        """A bucketed predictor without cuts gets the workload's own: quantile cuts of the held-out output
        lengths (requests the run does not score); without any, of the scored ones, with a warning."""
        if self.predictor != "bucketed" or self.predictor_cuts:
            return {}
        if held_out is None or not len(held_out):
            warn("scheduler.predictor_cuts: no requests outside the scored window to cut buckets on; the cuts "
                 "come from the scored requests themselves (in-sample)")
            held_out = state.output_tokens
        return {"predictor_cuts": list(quantile_cuts(held_out))}

    def predict(self, state) -> Prediction:
        return predict_lengths(state, self.predictor, self.predictor_median_error, tuple(self.predictor_cuts),
                               self.predictor_exact, self.predictor_within_one, self.predictor_tau)


def need_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise LapsbenchError(f"scheduler.{name}: {value!r} — expected a number >= 0")


def need_positive(name: str, value: float) -> None:
    if not value > 0:
        raise LapsbenchError(f"scheduler.{name}: {value!r} — expected a number > 0")


def need_at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise LapsbenchError(f"scheduler.{name}: {value!r} — expected an integer >= {low}")


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
    """Each request's true steps at batch size 1 — the engine's own step table (lapsbench.engine.steptable), drawn
    from the acceptance process's future draws and priced by the cost profile (integer nanoseconds)."""

    def __init__(self, state) -> None:
        from lapsbench.engine.steptable import build_step_table

        if state.acceptance is None:
            raise LapsbenchError("scheduler: this oracle needs the acceptance process (EngineState.acceptance); "
                                 "the runner sets it")
        self.table = state.step_table if state.step_table is not None else build_step_table(
            state.request_id, state.prompt_tokens, state.output_tokens, state.k, state.cost, state.acceptance)
        self.total_ns = self.table.service_ns()

    def service_s(self) -> np.ndarray:
        from lapsbench.engine.steptable import NS

        return self.total_ns / NS


# ----------------------------------------------------------------------------- multi-level queues
# Fields every level-queue packed tuple has: level, seq (entry sequence number), entry_attained, entry_s
# (int64 / float64 per request) and counters (int64: [0] the sequence counter, then the policy's own).
@njit(cache=True)
def enter_level(P, r, level, service, t):
    """Request r enters `level` at time t with `service` attained (a new entry sequence number)."""
    P.counters[0] += 1
    P.level[r] = level
    P.seq[r] = P.counters[0]
    P.entry_attained[r] = service
    P.entry_s[r] = t


@njit(cache=True)
def promote_idle(P, R, unit, end, idle_s):
    """Requests present and idle for at least idle_s go back to level 0 (in index order)."""
    promoted = False
    for r in range(R.arrival_s.size):
        if R.arrival_s[r] <= end and not R.done[r] and end - R.last_service_s[r] >= idle_s and P.level[r] > 0:
            enter_level(P, r, 0, attained(R, unit, r), end)
            promoted = True
    return promoted
