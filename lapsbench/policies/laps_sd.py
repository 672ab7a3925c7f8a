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
request's current context.

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
  join."""

from dataclasses import dataclass

import numpy as np

from lapsbench.errors import LapsbenchError
from lapsbench.policies import compiled
from lapsbench.policies._common import (
    UNITS,
    PredictorParams,
    attained,
    batch1_prefill_s,
    decode_step_s,
    geometric_bounds,
    need_choice,
    need_increasing,
    need_non_negative,
    steps_before_crossing,
    warn,
)
from lapsbench.policies.base import INF_STEPS, Plan, Policy, register
from lapsbench.state import EngineState

PLACEMENTS = ("perceived", "queue", "global-srpt")
PLACEMENT_CODE = {"queue": 0, "global-srpt": 1, "perceived": 2}


@register
@dataclass
class LAPSSD(PredictorParams, Policy):
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
    preemptive = True
    summary = "LAPS-SD: levels by attained service, perceptible (stable-acceptance) requests by estimated remaining"

    def __post_init__(self) -> None:
        self.check_predictor()
        need_choice("unit", self.unit, UNITS)
        need_non_negative("base_quantum", self.base_quantum)
        if not self.ratio > 1:
            raise LapsbenchError(f"scheduler.ratio: {self.ratio!r} — expected a number > 1")
        if self.num_queues < 1:
            raise LapsbenchError(f"scheduler.num_queues: {self.num_queues!r} — expected an integer >= 1")
        self.thresholds = need_increasing("thresholds", self.thresholds)
        if self.window < 1:
            raise LapsbenchError(f"scheduler.window: {self.window!r} — expected an integer >= 1")
        need_non_negative("tolerance", self.tolerance)
        if self.min_steps < 1:
            raise LapsbenchError(f"scheduler.min_steps: {self.min_steps!r} — expected an integer >= 1")
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

    # ----------------------------------------------------------------------------------------- ladder
    def first_quantum_floor(self, state: EngineState) -> float:
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

    def ladder(self, state: EngineState) -> np.ndarray:
        """The attained-service bounds B_1 < B_2 < ... of levels 1, 2, ... (level 0 starts at 0)."""
        if self.thresholds:
            return np.array(self.thresholds, np.float64)
        q0 = self.base_quantum or self.first_quantum_floor(state)
        return geometric_bounds(q0, self.ratio, self.num_queues)

    def derive(self, state: EngineState, held_out: np.ndarray | None = None) -> dict:
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

    # ------------------------------------------------------------------------------------------ setup
    def prepare(self, state: EngineState) -> None:
        n = state.n
        self.bounds = self.ladder(state)
        self.pred_tokens = self.predict(state).tokens
        self.perceptible = np.zeros(n, bool)
        self.perceptible_at = np.full(n, -1, np.int64)  # speculative step count when it became perceptible
        # generated tokens after each of the last window + 1 speculative steps (ring buffer by step number)
        self.ring = np.zeros((n, self.window + 1), np.int64)
        self._factor = np.zeros(n)
        self._factor_gen = np.full(n, -1, np.int64)

    # ---------------------------------------------------------------------------------------- queries
    def level(self, service: np.ndarray) -> np.ndarray:
        """Ladder level of a service amount (attained, or estimated remaining), in `unit`."""
        return np.searchsorted(self.bounds, service, side="right")

    def queue(self, state: EngineState, idx: np.ndarray) -> np.ndarray:
        return self.level(attained(state, self.unit)[idx])

    def acceptance(self, state: EngineState, idx: np.ndarray) -> np.ndarray:
        k, decode = state.k, state.decode_steps[idx]
        accepted = np.maximum(state.generated[idx] - 1 - decode, 0).astype(np.float64)
        trials = (k * decode).astype(np.float64)
        m, w = self.acceptance_prior_mean, self.acceptance_prior_strength
        with np.errstate(invalid="ignore", divide="ignore"):
            est = np.minimum((accepted + m * w) / (trials + w), 1.0)
        return np.where(trials + w > 0, est, m)

    def step_factor(self, state: EngineState, idx: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """k·T_draft + T_verify of the cost profile at batch size 1 and the request's current context
        (cached per request until its context changes)."""
        k = state.k
        if context is None:
            fresh = self._factor_gen[idx] != state.generated[idx]
            if fresh.any():
                todo = idx[fresh]
                self._factor[todo] = self.step_factor(state, todo, state.prompt_tokens[todo] + state.generated[todo])
                self._factor_gen[todo] = state.generated[todo]
            return self._factor[idx]
        table = state.cache.get("laps_sd_factor_by_context")
        if table is None:  # at batch size 1 the factor depends only on the context: tabulate it once
            everything = np.arange(int((state.prompt_tokens + state.output_tokens).max(initial=0)) + 1)
            ones = np.ones(everything.size)
            table = state.cost.verify_s(ones, ones * (k + 1), everything)
            if k > 0:
                table = table + k * state.cost.draft_s(ones, everything)
            state.cache["laps_sd_factor_by_context"] = table
        return table[np.asarray(context, np.int64)]

    def _left(self, state: EngineState, idx: np.ndarray) -> np.ndarray:
        return np.maximum(self.pred_tokens[idx] - state.generated[idx], self.min_remaining_tokens)

    def estimated_remaining_s(self, state: EngineState, idx: np.ndarray) -> np.ndarray:
        return self._left(state, idx) * self.step_factor(state, idx) / (state.k * self.acceptance(state, idx) + 1)

    def estimated_remaining(self, state: EngineState, idx: np.ndarray) -> np.ndarray:
        """Estimated remaining service in the ladder's `unit` (as the compiled kernel computes it)."""
        if self.unit == "seconds":
            return self.estimated_remaining_s(state, idx)
        left = self._left(state, idx)
        return left if self.unit == "tokens" else left / (state.k * self.acceptance(state, idx) + 1)

    def _by_estimate(self, state: EngineState, idx: np.ndarray) -> np.ndarray:
        """Which of `idx` are ranked by their estimate: perceptible ones, and under global-srpt also
        everyone past level `global_after_queue`."""
        perc = self.perceptible[idx]
        if self.perceptible_policy == "global-srpt":
            perc = perc | (self.queue(state, idx) > self.global_after_queue)
        return perc

    def _holds_against(self, state: EngineState, r: int, rival: tuple) -> int:
        """Steps r (ranked by its estimate, ranked first) can run before its keys could reach those of the
        runner-up `rival` (which do not change while r runs). Upper bounds of r's estimate after j more
        steps assume no further accepted draft, the remaining length unchanged and the step factor at the
        request's largest context."""
        k = state.k
        cap = 4096
        j = np.arange(1, cap)
        L = max(float(self.pred_tokens[r] - state.generated[r]), self.min_remaining_tokens)
        decode = int(state.decode_steps[r])
        accepted = max(int(state.generated[r]) - 1 - decode, 0)
        m, w = self.acceptance_prior_mean, self.acceptance_prior_strength
        trials = k * (decode + j) + w
        a_min = np.minimum(np.where(trials > 0, (accepted + m * w) / np.maximum(trials, 1e-300), m), 1.0)
        full = state.cache.get("laps_sd_full_factor")
        if full is None:  # the step factor at each request's largest context, once for everyone
            full = self.step_factor(state, np.arange(state.n), state.prompt_tokens + state.output_tokens)
            state.cache["laps_sd_full_factor"] = full
        per_step = (k * a_min + 1) / (1 + 1e-9)
        t_ub = L * float(full[r]) / per_step
        if self.perceptible_policy == "global-srpt":   # r in the global class: (g + 1, T)
            holds = (self.global_after_queue + 1 < rival[0]) | (t_ub < rival[1])
        else:                                          # (level, 0, T) against (level, perceptible ? 0 : 1, ·)
            if self.perceptible_policy == "queue":
                lv = np.full(j.size, int(self.queue(state, np.array([r]))[0]))  # fixed until the crossing horizon
            else:
                rem = t_ub if self.unit == "seconds" else (np.full(j.size, L) if self.unit == "tokens"
                                                           else L / per_step)
                lv = self.level(rem)
            holds = (lv < rival[0]) | ((lv == rival[0]) & ((rival[1] == 1) | (t_ub < rival[2])))
        bad = np.flatnonzero(~holds)
        return int(bad[0]) + 1 if bad.size else cap

    # --------------------------------------------------------------------------------------- contract
    def rank(self, state: EngineState, active: np.ndarray, now: float) -> tuple[np.ndarray, ...]:
        q = self.queue(state, active)
        by_est = self._by_estimate(state, active)
        est = np.zeros(active.size)
        if by_est.any():
            est[by_est] = self.estimated_remaining_s(state, active[by_est])
        if self.perceptible_policy == "global-srpt":
            return np.where(by_est, self.global_after_queue + 1, q), np.where(by_est, est, state.arrival_s[active])
        if self.perceptible_policy == "perceived" and by_est.any():
            q[by_est] = self.level(self.estimated_remaining(state, active[by_est]))
        return q, (~by_est).astype(np.int64), np.where(by_est, est, state.arrival_s[active])

    def plan(self, state: EngineState, order: np.ndarray, now: float) -> Plan:
        r = int(order[0])
        h = INF_STEPS
        by_est = bool(self._by_estimate(state, np.array([r]))[0])
        if by_est and order.size > 1:
            rival = tuple(np.asarray(key)[1] for key in self.rank(state, order[:2], now))
            h = self._holds_against(state, r, rival)
        if not by_est and not self.perceptible[r] and self.perceptible_policy != "queue":
            # turning perceptible re-places r (perceived: in the level of its estimate; global-srpt: in the
            # global class), so stop where the rule may fire. Under "queue" it only moves r ahead in its level.
            first_check = max(self.min_steps, self.window + 1)
            h = max(1, first_check - int(state.decode_steps[r])) if state.steps[r] > 0 else 1
        if not by_est or self.perceptible_policy == "queue":  # placed by attained service: until its next bound
            qr = int(self.queue(state, np.array([r]))[0])
            if qr < self.bounds.size:
                budget = float(self.bounds[qr]) - float(attained(state, self.unit)[r])
                h = min(h, steps_before_crossing(state, r, self.unit, budget))
        return Plan(order[:1], h)

    def observe(self, state: EngineState, served: np.ndarray, emitted: np.ndarray, end_s: np.ndarray) -> None:
        w = self.window + 1
        for r in np.unique(served):
            mine = np.flatnonzero(served == r)
            tokens = emitted[mine]
            gen_after = state.generated[r] - tokens.sum() + np.cumsum(tokens)
            spec_after = state.decode_steps[r] - mine.size + 1 + np.arange(mine.size)  # speculative steps so far
            for g, s in zip(gen_after, spec_after, strict=True):
                if s < 1:
                    continue  # the prefill step
                self.ring[r, s % w] = g
                if self.perceptible[r] or s < self.min_steps or s < w:
                    continue
                a_now = _estimate(int(g), int(s), state.k)
                a_then = _estimate(int(self.ring[r, (s - self.window) % w]), int(s - self.window), state.k)
                if abs(a_now - a_then) <= self.tolerance * a_now:
                    self.perceptible[r] = True
                    self.perceptible_at[r] = s

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        self.step_factor(state, np.zeros(0, np.int64), np.zeros(0, np.int64))  # tabulate the factor by context
        k = compiled.kernel(
            compiled.LAPS_SD, state.n,
            fp=[self.min_remaining_tokens, self.acceptance_prior_mean, self.acceptance_prior_strength, self.tolerance],
            ip=[compiled.UNIT_CODE[self.unit], PLACEMENT_CODE[self.perceptible_policy], self.global_after_queue,
                self.window, self.min_steps, state.k, self.bounds.size],
            F=self.pred_tokens, I_cols=2 + self.window,
            T=np.concatenate((self.bounds, state.cache["laps_sd_factor_by_context"])))
        k.I[:, 0] = self.perceptible
        k.I[:, 1:] = self.ring
        return k


def _estimate(generated: int, spec_steps: int, k: int) -> float:
    """Running acceptance after `spec_steps` speculative steps (tokens beyond one per step / drafts)."""
    if k == 0:
        return 0.0
    return max(generated - 1 - spec_steps, 0) / (k * spec_steps)


def perceptible_steps(table, k: int, window: int = 5, tolerance: float = 0.05, min_steps: int = 10) -> np.ndarray:
    """Per request of a batch-1 step table (lapsbench.steptable): the speculative step after which the
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
