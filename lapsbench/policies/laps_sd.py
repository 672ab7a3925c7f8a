"""LAPS-SD (Li, Chen, Li, IJCAI'25; shared docs/laps-sd.md; lapsbench's reading in docs/schedulers.md).

Multi-level queues on attained service: queue ℓ holds requests whose attained service (`unit`: seconds of
GPU time by default) lies in [B_ℓ, B_{ℓ+1}), B_ℓ = q_0·(ratio^ℓ − 1)/(ratio − 1), `num_queues` queues,
the last unbounded; q_0 = `base_quantum` (0 = auto: `auto_quantum_steps` decode steps of the median-prompt
request). The highest non-empty queue is served; preemption at step boundaries.

Every request starts **non-perceptible** in the top queue. Stability rule: after a speculative step, a
request becomes **perceptible** when it has taken at least `min_steps` speculative steps and its running
acceptance estimate changed by at most `tolerance` (relative) over the last `window` steps:
|Â_s − Â_{s−window}| <= tolerance·Â_s. Perceptible requests get an estimated remaining time

    T = (k·L·T_draft + L·T_verify) / (k·A + 1)

with L = max(predicted total length − generated, `min_remaining_tokens`) from the length predictor
(default `lognormal`, 25% median error), A the observed acceptance (Beta-smoothed by
`acceptance_prior_*`), T_draft / T_verify the cost profile's batch-1 draft and verify forwards at the
request's current context.

Placement (`perceptible_policy`): "queue" (default) — perceptible requests stay in their queue and go
ahead of its non-perceptible requests, shortest T first; non-perceptible ones are FCFS by arrival within a
queue. "global-srpt" — perceptible requests leave the ladder and form one class, ordered by T, placed right
after queue `global_after_queue` (default 0: fresh requests still probe first)."""

from dataclasses import dataclass

import numpy as np

from lapsbench.costmodel import sd_step_s
from lapsbench.errors import LapsbenchError
from lapsbench.policies import compiled
from lapsbench.policies._common import (
    UNITS,
    PredictorParams,
    attained,
    geometric_bounds,
    need_choice,
    need_non_negative,
    steps_before_crossing,
)
from lapsbench.policies.base import INF_STEPS, Plan, Policy, register
from lapsbench.state import EngineState

PLACEMENTS = ("queue", "global-srpt")


@register
@dataclass
class LAPSSD(PredictorParams, Policy):
    predictor: str = "lognormal"
    unit: str = "seconds"
    base_quantum: float = 0.0
    auto_quantum_steps: float = 4.0
    ratio: float = 2.0
    num_queues: int = 8
    window: int = 5
    tolerance: float = 0.05
    min_steps: int = 10
    perceptible_policy: str = "queue"
    global_after_queue: int = 0
    min_remaining_tokens: float = 1.0
    acceptance_prior_mean: float = 0.5
    acceptance_prior_strength: float = 0.0

    name = "laps-sd"
    preemptive = True
    summary = "LAPS-SD: LAS queues; perceptible (stable-acceptance) requests by est. remaining time"

    def __post_init__(self) -> None:
        self.check_predictor()
        need_choice("unit", self.unit, UNITS)
        need_non_negative("base_quantum", self.base_quantum)
        if not self.auto_quantum_steps > 0:
            raise LapsbenchError(f"scheduler.auto_quantum_steps: {self.auto_quantum_steps!r} — expected a number > 0")
        if not self.ratio > 1:
            raise LapsbenchError(f"scheduler.ratio: {self.ratio!r} — expected a number > 1")
        if self.num_queues < 1:
            raise LapsbenchError(f"scheduler.num_queues: {self.num_queues!r} — expected an integer >= 1")
        if self.window < 1:
            raise LapsbenchError(f"scheduler.window: {self.window!r} — expected an integer >= 1")
        need_non_negative("tolerance", self.tolerance)
        if self.min_steps < 1:
            raise LapsbenchError(f"scheduler.min_steps: {self.min_steps!r} — expected an integer >= 1")
        need_choice("perceptible_policy", self.perceptible_policy, PLACEMENTS)
        if not 0 <= self.global_after_queue < self.num_queues:
            raise LapsbenchError(f"scheduler.global_after_queue: {self.global_after_queue!r} — expected an integer "
                                 f"in [0, {self.num_queues - 1}]")
        need_non_negative("min_remaining_tokens", self.min_remaining_tokens)
        if not 0 <= self.acceptance_prior_mean <= 1:
            raise LapsbenchError(f"scheduler.acceptance_prior_mean: {self.acceptance_prior_mean!r} — expected a "
                                 "number in [0, 1]")
        need_non_negative("acceptance_prior_strength", self.acceptance_prior_strength)

    # ------------------------------------------------------------------------------------------ setup
    def prepare(self, state: EngineState) -> None:
        n = state.n
        base = self.base_quantum
        if base == 0:
            if self.unit == "seconds":
                median = np.array([int(np.median(state.prompt_tokens)) if n else 1])
                base = self.auto_quantum_steps * float(sd_step_s(state.cost, state.k, np.ones(1), median)[0])
            elif self.unit == "tokens":
                base = self.auto_quantum_steps * (1 + state.k * 0.5)
            else:
                base = self.auto_quantum_steps
        self.q0 = base
        self.bounds = geometric_bounds(base, self.ratio, self.num_queues)
        self.pred_tokens = self.predict(state).tokens
        self.perceptible = np.zeros(n, bool)
        self.perceptible_at = np.full(n, -1, np.int64)  # speculative step count when it became perceptible
        # generated tokens after each of the last window + 1 speculative steps (ring buffer by step number)
        self.ring = np.zeros((n, self.window + 1), np.int64)
        self._factor = np.zeros(n)
        self._factor_gen = np.full(n, -1, np.int64)

    # ---------------------------------------------------------------------------------------- queries
    def queue(self, state: EngineState, idx: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bounds, attained(state, self.unit)[idx], side="right")

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

    def estimated_remaining_s(self, state: EngineState, idx: np.ndarray) -> np.ndarray:
        L = np.maximum(self.pred_tokens[idx] - state.generated[idx], self.min_remaining_tokens)
        return L * self.step_factor(state, idx) / (state.k * self.acceptance(state, idx) + 1)

    def _holds_against(self, state: EngineState, r: int, rival_s: float) -> int:
        """Steps r (perceptible, ranked first) can run before its estimate could exceed `rival_s`: an upper
        bound of its estimate after j more steps assumes no further draft is accepted, the remaining length
        unchanged and the step factor at the request's largest context."""
        k = state.k
        cap = 4096
        j = np.arange(1, cap)
        L = max(float(self.pred_tokens[r] - state.generated[r]), self.min_remaining_tokens)
        decode = int(state.decode_steps[r])
        accepted = max(int(state.generated[r]) - 1 - decode, 0)
        m, w = self.acceptance_prior_mean, self.acceptance_prior_strength
        trials = k * (decode + j) + w
        a_min = np.where(trials > 0, (accepted + m * w) / np.maximum(trials, 1e-300), m)
        a_min = np.minimum(a_min, 1.0)
        full = state.cache.get("laps_sd_full_factor")
        if full is None:  # the step factor at each request's largest context, once for everyone
            full = self.step_factor(state, np.arange(state.n), state.prompt_tokens + state.output_tokens)
            state.cache["laps_sd_full_factor"] = full
        c = float(full[r])
        ub = L * c * (1 + 1e-9) / (k * a_min + 1)
        bad = np.flatnonzero(ub >= rival_s)
        return int(bad[0]) + 1 if bad.size else cap

    # --------------------------------------------------------------------------------------- contract
    def rank(self, state: EngineState, active: np.ndarray, now: float) -> tuple[np.ndarray, ...]:
        q = self.queue(state, active)
        perc = self.perceptible[active]
        est = np.zeros(active.size)
        if perc.any():
            est[perc] = self.estimated_remaining_s(state, active[perc])
        if self.perceptible_policy == "queue":
            return q, (~perc).astype(np.int64), np.where(perc, est, state.arrival_s[active])
        # global-srpt: perceptible requests form one class right after queue `global_after_queue`
        g = self.global_after_queue
        cls = np.where(perc, 2 * g + 1, 2 * np.minimum(q, g) + 2 * np.maximum(q - g, 0) + (q > g))
        return cls, np.where(perc, est, state.arrival_s[active])

    def plan(self, state: EngineState, order: np.ndarray, now: float) -> Plan:
        r = int(order[0])
        h = INF_STEPS
        if not self.perceptible[r]:
            if self.perceptible_policy != "queue":
                # global-srpt: turning perceptible moves r to another class, so stop where the rule may fire
                spec = int(state.decode_steps[r])
                first_check = max(self.min_steps, self.window + 1)
                h = max(1, first_check - spec) if state.steps[r] > 0 else 1
            # queue placement: r is first and not perceptible, so no perceptible request shares its queue;
            # turning perceptible only moves r ahead within its queue — its own rule cannot change the choice.
        elif order.size > 1:
            others = order[1:]
            contested = self.perceptible[others]
            if self.perceptible_policy == "queue":
                contested &= self.queue(state, others) == self.queue(state, np.array([r]))[0]
            if contested.any():
                rival = float(self.estimated_remaining_s(state, others[contested]).min())
                h = self._holds_against(state, r, rival)
        if self.perceptible_policy == "queue" or not self.perceptible[r]:
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
                a_now = self._estimate(int(g), int(s), state.k)
                a_then = self._estimate(int(self.ring[r, (s - self.window) % w]), int(s - self.window), state.k)
                if abs(a_now - a_then) <= self.tolerance * a_now:
                    self.perceptible[r] = True
                    self.perceptible_at[r] = s

    @staticmethod
    def _estimate(generated: int, spec_steps: int, k: int) -> float:
        """Running acceptance after `spec_steps` speculative steps (tokens beyond one per step / drafts)."""
        if k == 0:
            return 0.0
        return max(generated - 1 - spec_steps, 0) / (k * spec_steps)

    def kernel(self, state: EngineState) -> compiled.PolicyKernel:
        self.step_factor(state, np.zeros(0, np.int64), np.zeros(0, np.int64))  # tabulate the factor by context
        k = compiled.kernel(
            compiled.LAPS_SD, state.n,
            fp=[self.min_remaining_tokens, self.acceptance_prior_mean, self.acceptance_prior_strength, self.tolerance],
            ip=[compiled.UNIT_CODE[self.unit], int(self.perceptible_policy != "queue"), self.global_after_queue,
                self.window, self.min_steps, state.k, self.bounds.size],
            F=self.pred_tokens, I_cols=2 + self.window,
            T=np.concatenate((self.bounds, state.cache["laps_sd_factor_by_context"])))
        k.I[:, 0] = self.perceptible
        k.I[:, 1:] = self.ring
        return k
