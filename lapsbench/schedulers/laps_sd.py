"""LAPS-SD (Li, Chen, Li, IJCAI'25; shared docs/laps-sd.md; lapsbench's reading in docs/schedulers.md).

Multi-level queues ("the ladder"): level ℓ holds service in [B_ℓ, B_{ℓ+1}) (`unit`: seconds of GPU time by
default), B_0 = 0, the last level unbounded. The bounds are `thresholds` when given, else geometric,
B_ℓ = q_0·(ratio^ℓ − 1)/(ratio − 1) over `num_queues` levels, with q_0 = `base_quantum` or (0, the default)
the first quantum the stability rule needs: one median prefill plus max(`min_steps`, `window` + 1)
speculative steps of the workload's median-prompt request. The lowest non-empty level is served;
preemption at step boundaries.

Every request starts **non-perceptible**. Stability rule: after a speculative step s, a request becomes
**perceptible** (for good) when s >= `min_steps` and its running acceptance estimate changed by at most
`tolerance` (relative) over the last `window` steps: |Â_s − Â_{s−window}| <= tolerance·Â_s. A perceptible
request has an estimated remaining time

    T = (k·L·T_draft + L·T_verify) / (k·A + 1)

with L = max(predicted total length − generated, `min_remaining_tokens`) from the length predictor
(default `lognormal`, 25% median error), A the observed acceptance (Beta-smoothed by
`acceptance_prior_*`), T_draft / T_verify the cost profile's batch-1 draft and verify forwards at the
request's current context. Under `[speculation] adaptive`, k in the divisor is the K actually run (the request's
mean draft length so far, `R.drafted / R.decode_steps`; speculation.k before its first decode step); the
per-token time factor stays priced at speculation.k (an approximation).

Placement (`perceptible_policy`):
- "perceived" (default; the algorithm's name, Least-Attained/Perceived-Service): a non-perceptible request
  sits in the level of its attained service, a perceptible one in the level of its estimated remaining
  service (T in seconds; L/(k·A + 1) steps; L tokens) on the same ladder; inside a level perceptible
  requests go first, shortest T first, then the rest by arrival.
- "queue": every request sits in the level of its attained service; perceptible ones go ahead of the
  non-perceptible ones of their level, shortest T first.
- "global-srpt": levels 0..`global_after_queue` by attained service (arrival order inside) are served
  first; every other request — perceptible, or past those levels — forms one class ordered by T (from the
  acceptance observed so far when not yet perceptible), so no request waits behind a class it can never
  join.

Acceptance is read as observed so far: accepted tokens (generated beyond one per step, the prefill's first
excluded) over draft tokens proposed (`R.drafted`)."""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from lapsbench.errors import LapsbenchError
from lapsbench.schedulers._common import (
    UNIT_CODE,
    UNIT_SECONDS,
    UNIT_STEPS,
    UNITS,
    PredictorParams,
    attained,
    batch1_prefill_s,
    decode_step_s,
    geometric_bounds,
    need_at_least,
    need_choice,
    need_increasing,
    need_non_negative,
    warn,
)
from lapsbench.schedulers.base import Scheduler, register
from lapsbench.schedulers.jit import njit

PLACEMENTS = ("perceived", "queue", "global-srpt")
QUEUE, GLOBAL_SRPT, PERCEIVED = 0, 1, 2
PLACEMENT_CODE = {"queue": QUEUE, "global-srpt": GLOBAL_SRPT, "perceived": PERCEIVED}


class LAPSSDPacked(NamedTuple):
    unit: int
    placement: int
    global_after_queue: int
    window: int
    min_steps: int
    k: int
    min_remaining_tokens: float
    prior_mean: float
    prior_strength: float
    tolerance: float
    bounds: np.ndarray           # float64: the ladder B_1 < B_2 < ...
    factor: np.ndarray           # float64: k·T_draft + T_verify at batch size 1, by context
    predicted: np.ndarray        # float64: predicted total output tokens
    perceptible: np.ndarray      # bool per request (for good once set)
    perceptible_at: np.ndarray   # int64: the speculative step at which it became perceptible (-1 = not)
    ring_generated: np.ndarray   # int64 (n, window + 1): generated tokens after each recent speculative step
    ring_drafted: np.ndarray     # int64 (n, window + 1): draft tokens proposed by then


@njit(cache=True)
def acceptance_so_far(generated, decode_steps, drafted):
    """Accepted draft tokens over drafted ones (0 before any draft)."""
    if drafted == 0:
        return 0.0
    return max(generated - 1 - decode_steps, 0) / drafted


@njit(cache=True)
def estimate(P, R, i):
    """(T seconds, the estimated remaining service in the ladder's unit) of request i."""
    generated = R.generated[i]
    left = P.predicted[i] - float(generated)
    L = left if left > P.min_remaining_tokens else P.min_remaining_tokens
    accepted = max(generated - 1 - R.decode_steps[i], 0)
    trials = float(R.drafted[i])
    m, w = P.prior_mean, P.prior_strength
    a = min((float(accepted) + m * w) / (trials + w), 1.0) if trials + w > 0 else m
    # the K actually run: the request's mean draft length so far (= P.k under a fixed k; P.k before its first
    # decode step), so under `[speculation] adaptive` the estimate follows the speculation policy
    steps = R.decode_steps[i]
    kk = trials / steps if steps > 0 else float(P.k)
    per = kk * a + 1
    t = L * P.factor[R.prompt_tokens[i] + generated] / per
    if P.unit == UNIT_SECONDS:
        return t, t
    if P.unit == UNIT_STEPS:
        return t, L / per
    return t, L


@register
@dataclass(frozen=True)
class LAPSSD(PredictorParams, Scheduler):
    predictor: str = "lognormal"
    unit: str = "seconds"
    base_quantum: float = 0.0
    ratio: float = 2.0
    num_queues: int = 8
    thresholds: tuple = ()
    window: int = 5
    tolerance: float = 0.05
    min_steps: int = 10
    perceptible_policy: str = "perceived"
    global_after_queue: int = 0
    min_remaining_tokens: float = 1.0
    acceptance_prior_mean: float = 0.5
    acceptance_prior_strength: float = 0.0

    name = "laps-sd"
    summary = "LAPS-SD: levels by attained service, perceptible (stable-acceptance) requests by estimated remaining"

    def __post_init__(self) -> None:
        self.check_predictor()
        need_choice("unit", self.unit, UNITS)
        need_non_negative("base_quantum", self.base_quantum)
        if not self.ratio > 1:
            raise LapsbenchError(f"scheduler.ratio: {self.ratio!r} — expected a number > 1")
        need_at_least("num_queues", self.num_queues, 1)
        object.__setattr__(self, "thresholds", need_increasing("thresholds", self.thresholds))
        need_at_least("window", self.window, 1)
        need_non_negative("tolerance", self.tolerance)
        need_at_least("min_steps", self.min_steps, 1)
        need_choice("perceptible_policy", self.perceptible_policy, PLACEMENTS)
        levels = len(self.thresholds) + 1 if self.thresholds else self.num_queues
        if not 0 <= self.global_after_queue < levels:
            raise LapsbenchError(f"scheduler.global_after_queue: {self.global_after_queue!r} — expected an integer "
                                 f"in [0, {levels - 1}]")
        need_non_negative("min_remaining_tokens", self.min_remaining_tokens)
        if not 0 <= self.acceptance_prior_mean <= 1:
            raise LapsbenchError(f"scheduler.acceptance_prior_mean: {self.acceptance_prior_mean!r} — expected a "
                                 "number in [0, 1]")
        need_non_negative("acceptance_prior_strength", self.acceptance_prior_strength)

    # ------------------------------------------------------------------- run-once: the ladder, the tables
    def first_quantum_floor(self, state) -> float:
        """The service (in `unit`) a request takes before the stability rule can first fire: its prefill
        plus max(min_steps, window + 1) speculative steps — priced at the workload's median prompt in
        seconds; at most k + 1 tokens per step in tokens."""
        steps = max(self.min_steps, self.window + 1)
        if self.unit == "steps":
            return 1.0 + steps
        if self.unit == "tokens":
            return 1.0 + steps * (state.k + 1)
        median = np.array([int(np.median(state.prompt_tokens)) if state.n else 1])
        return float(batch1_prefill_s(state.cost, state.k, median)[0] + steps * decode_step_s(state, median)[0])

    def ladder(self, state) -> np.ndarray:
        """The attained-service bounds B_1 < B_2 < ... of levels 1, 2, ... (level 0 starts at 0)."""
        if self.thresholds:
            return np.array(self.thresholds, np.float64)
        q0 = self.base_quantum or self.first_quantum_floor(state)
        return geometric_bounds(q0, self.ratio, self.num_queues)

    def derive(self, state, held_out: np.ndarray | None = None) -> dict:
        """The ladder, fixed once per run from the workload (every threshold, written to meta.json), and the
        predictor's derived parameters; one warning line when a user-set first quantum is shorter than the
        stability rule needs."""
        floor = self.first_quantum_floor(state)
        bounds = self.ladder(state)
        if bounds.size and bounds[0] < floor * (1 - 1e-9) and (self.thresholds or self.base_quantum):
            key = "thresholds[0]" if self.thresholds else "base_quantum"
            warn(f"scheduler laps-sd: {key} = {bounds[0]:.6g} {self.unit} is shorter than one median prefill plus "
                 f"{max(self.min_steps, self.window + 1)} speculative steps ({floor:.6g} {self.unit}): most "
                 "requests leave the first level before their acceptance can be judged stable")
        return {**super().derive(state, held_out), "thresholds": [float(b) for b in bounds]}

    def step_factor(self, state) -> np.ndarray:
        """k·T_draft + T_verify of the cost profile at batch size 1, by context (0 .. the longest request)."""
        k = state.k
        everything = np.arange(int((state.prompt_tokens + state.output_tokens).max(initial=0)) + 1)
        ones = np.ones(everything.size)
        table = state.cost.verify_s(ones, ones * (k + 1), everything)
        if k > 0:
            table = table + k * state.cost.draft_s(ones, everything)
        return np.ascontiguousarray(table, np.float64)

    def pack(self, state) -> LAPSSDPacked:
        n, w = state.n, self.window + 1
        return LAPSSDPacked(
            unit=UNIT_CODE[self.unit], placement=PLACEMENT_CODE[self.perceptible_policy],
            global_after_queue=self.global_after_queue, window=self.window, min_steps=self.min_steps, k=state.k,
            min_remaining_tokens=float(self.min_remaining_tokens), prior_mean=float(self.acceptance_prior_mean),
            prior_strength=float(self.acceptance_prior_strength), tolerance=float(self.tolerance),
            bounds=self.ladder(state), factor=self.step_factor(state),
            predicted=np.asarray(self.predict(state).tokens, np.float64), perceptible=np.zeros(n, np.bool_),
            perceptible_at=np.full(n, -1, np.int64), ring_generated=np.zeros((n, w), np.int64),
            ring_drafted=np.zeros((n, w), np.int64))

    # ------------------------------------------------------------------------------------ compiled
    @staticmethod
    @njit(cache=True)
    def key(P, R, i):
        q = np.searchsorted(P.bounds, attained(R, P.unit, i), side="right")
        perceptible = P.perceptible[i]
        if P.placement == GLOBAL_SRPT:  # levels 0..g by attained service, then one class by estimate
            g = P.global_after_queue
            if perceptible or q > g:
                return float(g + 1), estimate(P, R, i)[0], 0.0
            return float(q), R.arrival_s[i], 0.0
        if not perceptible:
            return float(q), 1.0, R.arrival_s[i]
        t, remaining = estimate(P, R, i)
        if P.placement == PERCEIVED:  # the level of the estimated remaining service
            q = np.searchsorted(P.bounds, remaining, side="right")
        return float(q), 0.0, t

    @staticmethod
    @njit(cache=True)
    def observe(P, R, served, m, end):
        """The stability rule, after each speculative step."""
        window = P.window
        w = window + 1
        for j in range(m):
            r = served[j]
            s = R.decode_steps[r]
            if s < 1 or P.perceptible[r]:  # the prefill step; or perceptible already (for good)
                continue
            g, d = R.generated[r], R.drafted[r]
            P.ring_generated[r, s % w] = g
            P.ring_drafted[r, s % w] = d
            if s < P.min_steps or s < w:
                continue
            then = (s - window) % w
            a_now = acceptance_so_far(g, s, d)
            a_then = acceptance_so_far(P.ring_generated[r, then], s - window, P.ring_drafted[r, then])
            if abs(a_now - a_then) <= P.tolerance * a_now:
                P.perceptible[r] = True
                P.perceptible_at[r] = s
        return False


def perceptible_steps(table, k: int, window: int = 5, tolerance: float = 0.05, min_steps: int = 10) -> np.ndarray:
    """Per request of a batch-1 step table (lapsbench.engine.steptable): the speculative step after which the
    stability rule marks it perceptible while it still has steps to take, or -1. At batch size 1 this
    depends only on the request's own steps, not on the schedule (the report's "share perceptible")."""
    out = np.full(table.offset.size - 1, -1, np.int64)
    cum = table.cum_tokens
    first = max(min_steps, window + 1)
    for i in range(out.size):
        lo, hi = int(table.offset[i]), int(table.offset[i + 1])
        s = np.arange(first, hi - lo - 1)  # speculative steps s with a step after them
        if s.size == 0:
            continue
        if k == 0:  # no drafts: the estimate is 0 throughout, so the rule fires at its first check
            out[i] = first
            continue
        now = np.maximum(cum[lo + s].astype(np.int64) - 1 - s, 0) / (k * s)
        then = np.maximum(cum[lo + s - window].astype(np.int64) - 1 - (s - window), 0) / (k * (s - window))
        fired = np.flatnonzero(np.abs(now - then) <= tolerance * now)
        if fired.size:
            out[i] = s[fired[0]]
    return out
