"""The step simulator: one speculative-decoding engine serving a workload under one policy.

Time advances in engine steps. At batch size 1 a step serves one request: its first step is the prefill
(which emits the first token), every later step is `k` draft forwards plus one verify forward emitting
1..k+1 tokens. Decisions are taken at step boundaries only.

Event skipping: between decision points nothing changes the policy's choice, so a whole run of steps
(a *segment*) is computed at once with NumPy — acceptance draws, capped cumulative tokens, step costs
and end times — and cut at the first arrival, completion or policy horizon. A plain step-by-step
engine in tests/reference_engine.py must give identical per-request results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from lapsbench.costmodel import sd_step_s
from lapsbench.policies.base import Plan, Policy
from lapsbench.state import EngineState

MAX_SEGMENT_STEPS = 1 << 15


class Acceptance(Protocol):
    def emitted(self, req: np.ndarray, step: np.ndarray, position: np.ndarray) -> np.ndarray: ...


def step_costs(state: EngineState, req: np.ndarray, steps_done: np.ndarray, gen_before: np.ndarray) -> np.ndarray:
    """Batch-1 step time of request `req` whose step number `steps_done` starts with `gen_before` tokens."""
    cost = state.cost
    if cost.is_fixed:
        decode_s = cost.fixed_step_s + state.k * cost.fixed_draft_step_s
        if cost.fixed_prefill_s_per_token == 0.0 and state.k * cost.fixed_draft_step_s == 0.0:
            return np.full(np.shape(req), decode_s)
    prompt = state.prompt_tokens[req]
    decode = sd_step_s(state.cost, state.k, np.ones_like(prompt), prompt + gen_before)
    if not np.any(steps_done == 0):
        return decode
    prefill = state.cost.prefill_s(np.ones_like(prompt), prompt, prompt * prompt, np.zeros_like(prompt),
                                   np.zeros_like(prompt), with_draft=state.k > 0)
    return np.where(steps_done == 0, prefill, decode)


def rank_order(policy: Policy, state: EngineState, active: np.ndarray, now: float) -> np.ndarray:
    """Active requests best first: policy keys, then arrival order (= index), stable."""
    keys = policy.rank(state, active, now)
    if isinstance(keys, tuple):
        return active[np.lexsort((active,) + tuple(reversed(keys)))]
    return active[np.argsort(keys, kind="stable")]


def _emitted_rounds(acceptance: Acceptance, group: np.ndarray, steps0: np.ndarray, gen0: np.ndarray,
                    rounds: int) -> np.ndarray:
    """Uncapped tokens per (round, member): 1 for a prefill step, the acceptance draw otherwise."""
    step_no = steps0[None, :] + np.arange(rounds)[:, None]
    req = np.broadcast_to(group, step_no.shape)
    if getattr(acceptance, "position_dependent", False):
        out = np.empty(step_no.shape, np.int64)
        pos = gen0.copy()
        for r in range(rounds):
            e = np.where(step_no[r] == 0, 1, acceptance.emitted(group, np.maximum(step_no[r] - 1, 0), pos))
            out[r] = e
            pos = pos + e
        return out
    drawn = acceptance.emitted(req, np.maximum(step_no - 1, 0), np.zeros_like(step_no))
    return np.where(step_no == 0, 1, drawn)


def _run_single(state: EngineState, r: int, max_steps: int, acceptance: Acceptance, now: float,
                next_arrival_s: float) -> tuple[float, int, np.ndarray, np.ndarray, np.ndarray]:
    """`run_segment` for a group of one request: the common case, kept lean (few NumPy calls)."""
    gen0 = int(state.generated[r])
    steps0 = int(state.steps[r])
    out = int(state.output_tokens[r])
    n_steps = min(max_steps, out - gen0, MAX_SEGMENT_STEPS)
    step_no = np.arange(steps0, steps0 + n_steps)
    req = np.full(n_steps, r)
    if getattr(acceptance, "position_dependent", False):
        emitted = _emitted_rounds(acceptance, req[:1], np.array([steps0]), np.array([gen0]), n_steps)[:, 0]
    else:
        emitted = acceptance.emitted(req, np.maximum(step_no - 1, 0), step_no)
        if steps0 == 0:
            emitted[0] = 1
    gen_after = np.minimum(np.cumsum(emitted) + gen0, out)
    gen_before = np.concatenate(([gen0], gen_after[:-1]))
    cost = step_costs(state, req, step_no, gen_before)
    end = np.add.accumulate(np.concatenate(([now], cost)))[1:]
    stop = n_steps - 1
    if gen_after[-1] >= out:
        stop = int(np.searchsorted(gen_after, out, side="left"))
    if next_arrival_s <= end[stop]:
        stop = int(np.searchsorted(end, next_arrival_s, side="left"))
    executed = stop + 1
    state.generated[r] = gen_after[stop]
    state.steps[r] = steps0 + executed
    state.decode_steps[r] = steps0 + executed - 1  # at batch 1 the only prefill step is the first
    state.attained_s[r] = np.add.accumulate(np.concatenate(([state.attained_s[r]], cost[:executed])))[-1]
    state.last_service_s[r] = end[stop]
    if steps0 == 0:
        state.first_token_s[r] = end[0]
    finished = -1
    if gen_after[stop] >= out:
        finished = r
        state.finish_s[r] = end[stop]
        state.done[r] = True
    return float(end[stop]), finished, req[:executed], (gen_after - gen_before)[:executed], end[:executed]


def run_segment(state: EngineState, plan: Plan, acceptance: Acceptance, now: float,
                next_arrival_s: float) -> tuple[float, int, np.ndarray, np.ndarray, np.ndarray]:
    """Serve `plan.group` round-robin (one step each) from `now`, stopping after the first step that
    ends at or after the next arrival, completes a request, or reaches the plan's horizon.

    Returns (new time, finished request or -1, served request per step, tokens per step, step ends)."""
    group = plan.group
    g = group.size
    if g == 1:
        return _run_single(state, int(group[0]), plan.max_steps, acceptance, now, next_arrival_s)
    gen0 = state.generated[group]
    steps0 = state.steps[group]
    out = state.output_tokens[group]
    # Every step emits >= 1 token, so someone completes within min(remaining) rounds.
    rounds = int(min(-(-plan.max_steps // g), (out - gen0).min(), max(1, MAX_SEGMENT_STEPS // g)))
    n_steps = int(min(plan.max_steps, rounds * g))

    emitted = _emitted_rounds(acceptance, group, steps0, gen0, rounds)
    gen_after = np.minimum(gen0[None, :] + np.cumsum(emitted, axis=0), out[None, :])
    gen_before = np.vstack([gen0[None, :], gen_after[:-1]])
    steps_done = steps0[None, :] + np.arange(rounds)[:, None]
    req = np.broadcast_to(group, gen_after.shape)

    flat = slice(0, n_steps)
    req_f = req.reshape(-1)[flat]
    cost_f = step_costs(state, req_f, steps_done.reshape(-1)[flat], gen_before.reshape(-1)[flat])
    end_f = np.add.accumulate(np.concatenate(([now], cost_f)))[1:]
    completes_f = (gen_after >= out[None, :]).reshape(-1)[flat]

    stop = n_steps - 1
    done_at = np.flatnonzero(completes_f)
    if done_at.size:
        stop = min(stop, int(done_at[0]))
    if next_arrival_s <= end_f[-1]:
        stop = min(stop, int(np.searchsorted(end_f, next_arrival_s, side="left")))
    executed = stop + 1

    member = np.arange(executed) % g
    count = np.bincount(member, minlength=g)
    ran = count > 0
    last_flat = (count - 1) * g + np.arange(g)  # flat index of each member's last executed step
    idx = group[ran]
    state.generated[idx] = gen_after[count[ran] - 1, np.flatnonzero(ran)]
    state.steps[group] += count
    state.decode_steps[group] = np.maximum(state.steps[group] - 1, 0)
    # Accumulate each member's service step by step (same float rounding as one step at a time).
    per_round = np.zeros(rounds * g)
    per_round[:executed] = cost_f[:executed]
    state.attained_s[group] = np.add.accumulate(
        np.vstack([state.attained_s[group][None, :], per_round.reshape(rounds, g)]), axis=0)[-1]
    state.last_service_s[idx] = end_f[last_flat[ran]]
    first = ran & (steps0 == 0)
    state.first_token_s[group[first]] = end_f[np.flatnonzero(first)]
    if g > 1:  # every step but the segment's last hands the server to another request
        np.add.at(state.preemptions, req_f[: executed - 1], 1)

    finished = -1
    if completes_f[stop]:
        finished = int(req_f[stop])
        state.finish_s[finished] = end_f[stop]
        state.done[finished] = True
    emitted_f = (gen_after - gen_before).reshape(-1)[:executed]
    return float(end_f[stop]), finished, req_f[:executed], emitted_f, end_f[:executed]


def simulate(state: EngineState, policy: Policy, acceptance: Acceptance,
             progress: Callable[[int], None] | None = None) -> EngineState:
    """Serve every request of `state` at batch size 1 under `policy`; fills the state's result arrays."""
    n = state.n
    arrival = state.arrival_s
    policy.prepare(state)
    now = 0.0
    admitted = 0
    finished_count = 0
    active = np.empty(0, np.int64)
    last_served = -1
    report_every = max(1, n // 200)
    while finished_count < n:
        upto = int(np.searchsorted(arrival, now, side="right"))
        if upto > admitted:
            active = np.concatenate((active, np.arange(admitted, upto)))
            admitted = upto
        if active.size == 0:
            now = float(arrival[admitted])
            continue
        if not policy.preemptive and last_served >= 0 and not state.done[last_served]:
            plan = Plan(np.array([last_served]), np.iinfo(np.int64).max // 4)
        else:
            plan = policy.plan(state, rank_order(policy, state, active, now), now)
        if last_served >= 0 and last_served != plan.group[0] and not state.done[last_served]:
            state.preemptions[last_served] += 1
        next_arrival_s = float(arrival[admitted]) if admitted < n else np.inf
        now, finished, served, emitted, ends = run_segment(state, plan, acceptance, now, next_arrival_s)
        policy.observe(state, served, emitted, ends)
        last_served = int(served[-1])
        if finished >= 0:
            active = active[active != finished]
            finished_count += 1
            if progress is not None and finished_count % report_every == 0:
                progress(finished_count)
    if progress is not None:
        progress(finished_count)
    return state
