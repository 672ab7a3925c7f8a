"""Helpers shared by the paper schedulers: service units, exact horizons, predictor parameters, and the
true-future oracle (for srpt-sd and SSJF's starvation guard)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lapsbench.errors import LapsbenchError
from lapsbench.predictors import DEFAULT_CUTS, Prediction, check_length_params, predict_lengths
from lapsbench.state import EngineState

UNITS = ("seconds", "steps", "tokens")
MARGIN = 1e-9


def step_costs(state: EngineState, req: np.ndarray, steps_done: np.ndarray, gen_before: np.ndarray) -> np.ndarray:
    """engine.step_costs, imported lazily (the engine imports the policy package)."""
    from lapsbench.engine import step_costs as costs

    return costs(state, req, steps_done, gen_before)


def attained(state: EngineState, unit: str) -> np.ndarray:
    if unit == "steps":
        return state.steps
    if unit == "tokens":
        return state.generated
    return state.attained_s


def max_step_s(state: EngineState, r: int) -> float:
    """An upper bound of request r's batch-1 step time from now on (decode cost grows with the context,
    so the step at the full context — prompt + output — bounds it; a first step is its prefill)."""
    req = np.array([r, r])
    steps = np.array([state.steps[r], max(int(state.steps[r]), 1)])
    gen = np.array([state.generated[r], state.output_tokens[r]])
    return float(step_costs(state, req, steps, gen).max())


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
    predictor_cuts: tuple = DEFAULT_CUTS
    predictor_exact: float = 0.60
    predictor_within_one: float = 0.93
    predictor_tau: float = 0.6

    def check_predictor(self) -> None:
        self.predictor_cuts = check_length_params("scheduler", self.predictor, self.predictor_median_error,
                                                  tuple(self.predictor_cuts), self.predictor_exact,
                                                  self.predictor_within_one, self.predictor_tau)

    def predict(self, state: EngineState) -> Prediction:
        return predict_lengths(state, self.predictor, self.predictor_median_error, tuple(self.predictor_cuts),
                               self.predictor_exact, self.predictor_within_one, self.predictor_tau)


def need_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise LapsbenchError(f"scheduler.{name}: {value!r} — expected a number >= 0")


def need_positive(name: str, value: float) -> None:
    if not value > 0:
        raise LapsbenchError(f"scheduler.{name}: {value!r} — expected a number > 0")


def need_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LapsbenchError(f"scheduler.{name}: {value!r} — expected one of {list(choices)}")


class TrueFuture:
    """Each request's true step sequence at batch size 1, read from the acceptance process's draws:
    total steps (prefill included) and cumulative step times, so the true remaining time of a request
    that has taken s steps is total_s − cum_s[s]. Exact at batch size 1 for any acceptance process that is
    not position dependent (every process in lapsbench)."""

    def __init__(self, state: EngineState, chunk_tokens: int = 1 << 22) -> None:
        acc = state.acceptance
        if acc is None:
            raise LapsbenchError("scheduler: this oracle needs the acceptance process (EngineState.acceptance); "
                                 "the runner sets it")
        if getattr(acc, "position_dependent", False):
            raise LapsbenchError("scheduler: the oracle needs an acceptance process that is not position dependent")
        n = state.n
        out = state.output_tokens
        self.total_steps = np.zeros(n, np.int64)
        self.offset = np.zeros(n, np.int64)
        cums: list[np.ndarray] = []
        start = 0
        while start < n:
            stop = start
            budget = 0
            while stop < n and (budget == 0 or budget + out[stop] <= chunk_tokens):
                budget += int(out[stop])
                stop += 1
            idx = np.arange(start, stop)
            length = out[idx]  # at most `out` steps: the prefill plus out − 1 decode steps
            seg = np.concatenate(([0], np.cumsum(length)[:-1]))
            req = np.repeat(idx, length)
            step = np.arange(int(length.sum())) - np.repeat(seg, length)
            drawn = acc.emitted(req, np.maximum(step - 1, 0), step)
            emitted = np.where(step == 0, 1, drawn)
            cum_tok = np.cumsum(emitted)
            base = np.repeat(cum_tok[seg] - emitted[seg], length)
            gen_after = np.minimum(cum_tok - base, np.repeat(out[idx], length))
            gen_before = np.concatenate(([0], gen_after[:-1]))
            gen_before[seg] = 0
            done_at = np.flatnonzero(gen_after >= np.repeat(out[idx], length))
            first_done = np.full(idx.size, -1)
            owner = np.searchsorted(seg, done_at, side="right") - 1
            first_done[owner[::-1]] = done_at[::-1]  # earliest completing step per request
            steps_total = first_done - seg + 1
            keep = step < np.repeat(steps_total, length)
            cost = step_costs(state, req[keep], step[keep], gen_before[keep])
            # cumulative cost per request, starting at 0 before the first step
            for_each = np.add.accumulate(cost)
            seg_k = np.concatenate(([0], np.cumsum(steps_total)[:-1]))
            prior = np.where(seg_k > 0, for_each[np.maximum(seg_k - 1, 0)], 0.0)
            local = for_each - np.repeat(prior, steps_total)
            self.total_steps[idx] = steps_total
            cums.append(np.concatenate([np.concatenate(([0.0], local[s:s + t]))
                                        for s, t in zip(seg_k, steps_total, strict=True)]))
            start = stop
        self.cum = np.concatenate(cums) if cums else np.zeros(0)
        ends = np.cumsum(self.total_steps + 1)
        self.offset = ends - (self.total_steps + 1)
        self.total_s = self.cum[self.offset + self.total_steps]

    def remaining_s(self, state: EngineState, idx: np.ndarray) -> np.ndarray:
        s = np.minimum(state.steps[idx], self.total_steps[idx])
        return self.total_s[idx] - self.cum[self.offset[idx] + s]

    def service_s(self, idx: np.ndarray) -> np.ndarray:
        return self.total_s[idx]
