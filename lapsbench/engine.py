"""The batch-1 step simulator: one speculative-decoding server, one request per step.

A request's first step is its prefill (emitting the first token); every later step is `k` draft
forwards plus one verify forward emitting 1..k+1 tokens. Decisions are taken at step boundaries only.

Every step a request will take is known in advance (lapsbench.steptable: at batch size 1 neither its
cost nor its acceptance depends on the schedule), so the engine only decides *when* steps run. Between
decision points nothing changes the policy's choice, so a whole run of steps (a *segment*) is applied at
once with table lookups, cut at the first arrival (preemptive policies), completion or policy horizon.
The clock is integer nanoseconds, so sums are exact whatever the grouping: tests/reference_engine.py,
one step at a time, gives identical results. Batched serving lives in lapsbench/batching.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from lapsbench.engine_compiled import run_compiled
from lapsbench.policies.base import Plan, Policy
from lapsbench.progress import Throttled
from lapsbench.state import EngineState
from lapsbench.steptable import NS, StepTable, build_step_table, to_ns

NEVER = np.iinfo(np.int64).max // 4


class Acceptance(Protocol):
    def emitted(self, req: np.ndarray, step: np.ndarray, position: np.ndarray) -> np.ndarray: ...


def rank_order(policy: Policy, state: EngineState, active: np.ndarray, now: float) -> np.ndarray:
    """Active requests best first: policy keys, then arrival order (= index), stable."""
    keys = policy.rank(state, active, now)
    if isinstance(keys, tuple):
        return active[np.lexsort((active,) + tuple(reversed(keys)))]
    return active[np.argsort(keys, kind="stable")]


def table_for(state: EngineState, acceptance: Acceptance) -> StepTable:
    return build_step_table(state.request_id, state.prompt_tokens, state.output_tokens, state.k, state.cost,
                            acceptance)


class SingleServer:
    """Batch-1 serving of one workload under one policy, driven by a step table."""

    def __init__(self, state: EngineState, policy: Policy, table: StepTable, compiled: bool = True) -> None:
        self.s, self.policy, self.t, self.compiled = state, policy, table, compiled
        self.arrival_ns = to_ns(state.arrival_s)
        self.n_steps = table.n_steps
        self.observes = type(policy).observe is not Policy.observe

    def _set_times(self, idx: np.ndarray, attained_ns: np.ndarray, last_ns: np.ndarray) -> None:
        self.s.attained_s[idx] = attained_ns / NS
        self.s.last_service_s[idx] = last_ns / NS

    def run_one(self, r: int, max_steps: int, now: int, next_arrival: int) -> tuple[int, bool]:
        """Serve request r alone for up to `max_steps` steps, stopping after the step that ends at or
        after `next_arrival` or completes it. Returns (new time, finished)."""
        s, t = self.s, self.t
        j0 = int(s.steps[r])
        base = int(t.offset[r]) + j0
        prev = int(t.cum_ns[base - 1]) if j0 else 0
        h = min(max_steps, int(self.n_steps[r]) - j0)
        if next_arrival - now + prev <= int(t.cum_ns[base + h - 1]):
            h = int(np.searchsorted(t.cum_ns[base:base + h], next_arrival - now + prev, side="left")) + 1
        last = base + h - 1
        end = now + int(t.cum_ns[last]) - prev
        if self.observes:
            rows = np.arange(base, base + h)
            prev_tok = int(t.cum_tokens[base - 1]) if j0 else 0
            tokens = np.diff(t.cum_tokens[rows].astype(np.int64), prepend=prev_tok)
            ends = (now + t.cum_ns[rows] - prev) / NS
        s.steps[r] = j0 + h
        s.decode_steps[r] = j0 + h - 1
        s.generated[r] = t.cum_tokens[last]
        s.attained_s[r] = int(t.cum_ns[last]) / NS  # a request's steps are contiguous in the table
        s.last_service_s[r] = end / NS
        if j0 == 0:
            s.first_token_s[r] = (now + int(t.cum_ns[base])) / NS
        finished = j0 + h == self.n_steps[r]
        if finished:
            s.finish_s[r] = end / NS
            s.done[r] = True
        if self.observes:
            self.policy.observe(s, np.full(h, r), tokens, ends)
        return end, finished

    def run_group(self, group: np.ndarray, max_steps: int, now: int, next_arrival: int) -> tuple[int, int, int]:
        """Serve `group` round-robin, one step each, for up to `max_steps` steps; stop after the step
        that ends at or after `next_arrival` or completes a request.
        Returns (new time, finished request or -1, request served last)."""
        s, t = self.s, self.t
        g = group.size
        j0 = s.steps[group]
        left = self.n_steps[group] - j0
        rounds = int(min(-(-max_steps // g), left.min()))
        n_steps = int(min(max_steps, rounds * g))
        rows = t.offset[group][None, :] + j0[None, :] + np.arange(rounds)[:, None]      # (rounds, g)
        prev_rows = rows - 1
        first_step = (j0[None, :] + np.arange(rounds)[:, None]) == 0
        cum_ns = t.cum_ns[rows]
        step_ns = cum_ns - np.where(first_step, 0, t.cum_ns[np.maximum(prev_rows, 0)])
        flat_ns = step_ns.reshape(-1)[:n_steps]
        end = now + np.cumsum(flat_ns)
        completes = (j0[None, :] + np.arange(rounds)[:, None] + 1 == self.n_steps[group][None, :]).reshape(-1)
        stop = n_steps - 1
        done_at = np.flatnonzero(completes[:n_steps])
        if done_at.size:
            stop = min(stop, int(done_at[0]))
        if next_arrival <= end[stop]:
            stop = min(stop, int(np.searchsorted(end, next_arrival, side="left")))
        executed = stop + 1
        member = np.arange(executed) % g
        count = np.bincount(member, minlength=g)
        ran = count > 0
        idx = group[ran]
        last_rows = rows[count[ran] - 1, np.flatnonzero(ran)]
        last_flat = (count[ran] - 1) * g + np.flatnonzero(ran)
        s.steps[idx] = j0[ran] + count[ran]
        s.decode_steps[idx] = s.steps[idx] - 1
        s.generated[idx] = t.cum_tokens[last_rows]
        self._set_times(idx, t.cum_ns[last_rows], end[last_flat])
        first = ran & (j0 == 0)
        s.first_token_s[group[first]] = end[np.flatnonzero(first)] / NS
        served = group[member]
        np.add.at(s.preemptions, served[:-1], 1)  # each step but the last hands the server on
        finished = -1
        if completes[stop]:
            finished = int(served[-1])
            s.finish_s[finished] = end[stop] / NS
            s.done[finished] = True
        if self.observes:
            flat_rows = rows.reshape(-1)[:executed]
            tok = t.cum_tokens[flat_rows].astype(np.int64) - np.where(
                first_step.reshape(-1)[:executed], 0, t.cum_tokens[np.maximum(flat_rows - 1, 0)])
            self.policy.observe(s, served, tok, end[:executed] / NS)
        return int(end[stop]), finished, int(served[-1])

    def run(self, progress: Callable[[int], None] | None = None) -> EngineState:
        s, policy = self.s, self.policy
        n = s.n
        arrival = self.arrival_ns
        policy.prepare(s)
        kernel = policy.kernel(s) if self.compiled else None
        if kernel is not None:
            return run_compiled(s, kernel, policy.preemptive, self.t, progress)
        now = 0
        admitted = 0
        finished_count = 0
        active = np.empty(0, np.int64)
        last_served = -1
        report = Throttled(progress, n) if progress is not None else None
        preemptive = policy.preemptive
        while finished_count < n:
            if admitted < n and arrival[admitted] <= now:
                upto = int(np.searchsorted(arrival, now, side="right"))
                active = np.concatenate((active, np.arange(admitted, upto)))
                admitted = upto
            if active.size == 0:
                now = int(arrival[admitted])
                continue
            next_arrival = int(arrival[admitted]) if admitted < n else NEVER
            if not preemptive and last_served >= 0 and not s.done[last_served]:
                plan = Plan(np.array([last_served]), NEVER)
            elif active.size == 1 and not preemptive:
                plan = Plan(active, NEVER)
            else:
                plan = policy.plan(s, rank_order(policy, s, active, now / NS), now / NS)
            first = int(plan.group[0])
            if last_served >= 0 and last_served != first and not s.done[last_served]:
                s.preemptions[last_served] += 1
            if plan.group.size == 1:
                # a non-preemptive policy keeps its request whatever arrives
                now, done = self.run_one(first, plan.max_steps, now, next_arrival if preemptive else NEVER)
                finished = first if done else -1
                last_served = first
            else:
                now, finished, last_served = self.run_group(plan.group, plan.max_steps, now, next_arrival)
            if finished >= 0:
                active = active[active != finished]
                finished_count += 1
                if report is not None:
                    report(finished_count)
        if report is not None:
            report(finished_count)
        return s


def simulate(state: EngineState, policy: Policy, acceptance: Acceptance,
             progress: Callable[[int], None] | None = None, table: StepTable | None = None,
             compiled: bool = True) -> EngineState:
    """Serve every request of `state` at batch size 1 under `policy`; fills the state's result arrays.
    `table` may be shared by every scheduler of a replication (it does not depend on the schedule).
    Policies with a compiled form run in lapsbench/engine_compiled.py unless `compiled` is False."""
    table = table if table is not None else table_for(state, acceptance)
    return SingleServer(state, policy, table, compiled).run(progress)
