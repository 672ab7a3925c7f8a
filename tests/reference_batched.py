"""The step-by-step batched reference: plain Python, one engine step at a time, the scheduler's compiled functions
(through lapsbench.schedulers.stepwise) ranking everyone before every step and observing after (the specification
of lapsbench/engine/batched.py, which must agree with it bit for bit; docs/batching.md gives the rules). Slow on
purpose; never used by the package."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lapsbench.engine.adaptive import sd_off_capacity
from lapsbench.engine.batched import livelock_message
from lapsbench.engine.batched_state import LIVELOCK_FACTOR
from lapsbench.engine.context import BatchConfig
from lapsbench.engine.state import EngineState
from lapsbench.errors import LapsbenchError
from lapsbench.models.kchoice import (
    FIXED,
    GOODPUT,
    AdaptivePack,
    alpha_estimate,
    choose_shared_k,
    goodput_per_request_k,
)
from lapsbench.models.pricing import (
    bucket_ms_of_chunks,
    chunk_bucket_ms,
    draft_rebuild_s,
    mixed_step_time_s,
    pack_cost,
    step_time_s,
)
from lapsbench.progress import Throttled
from lapsbench.schedulers.base import Scheduler
from lapsbench.schedulers.stepwise import Bound


def _roundup(tokens: np.ndarray, block: int) -> np.ndarray:
    return -(-tokens // block) * block


class ReferenceBatched:
    """One batched run, step by step: EngineState plus prefill progress and KV residency."""

    def __init__(self, state: EngineState, policy: Scheduler, acceptance, config: BatchConfig,
                 check_invariants: bool = True, adaptive: AdaptivePack | None = None) -> None:
        self.s, self.policy, self.acc, self.cfg = state, policy, acceptance, config
        self.check = check_invariants
        n = state.n
        # `[speculation] adaptive` (None or the fixed k: k every step): the choice, goodput's acceptance counters
        self.adaptive = adaptive if adaptive is not None and adaptive.code != FIXED else None
        self.n_acc = np.zeros(n, np.int64)
        self.n_rej = np.zeros(n, np.int64)
        self.k_rows = self.k_sum = self.dec_steps = self.off_steps = 0
        # off-under-load with free_draft_memory: the KV capacity admission fills (the configured one otherwise),
        # SD off this step, SD's on-periods so far, the on-period each request's draft KV was built in
        self.kv_cap = config.kv_capacity_tokens
        self.free_draft = self.adaptive is not None and self.adaptive.free_draft
        if self.free_draft:
            self.cap_off = sd_off_capacity(state.cost, config.kv_capacity_tokens, config.block_size)
        self.sd_off, self.epoch = False, 0
        self.rebuilt = self.rebuilt_tokens = 0
        self.draft_epoch = np.full(n, -1, np.int64)
        self.prefilled = np.zeros(n, np.int64)          # tokens of the current prefill target done
        self.target = state.prompt_tokens.copy()        # prefill target (prompt; prompt + generated after recompute)
        self.resident = np.zeros(n, bool)
        self.swapped = np.zeros(n, bool)
        self.swapped_tokens = np.zeros(n, np.int64)     # KV slots parked in host memory
        self.footprint = np.zeros(n, np.int64)          # KV slots held by residents
        self.served_share = np.zeros(n, np.float64)     # Σ step time / members over the steps served in
        self.entry_share = np.zeros(n, np.float64)      # served_share when it last entered memory
        self.used = 0
        self.static_batch = np.empty(0, np.int64)       # static/dynamic: the batch being run
        self.prev_members = np.empty(0, np.int64)       # the previous step's batch
        self.pack = pack_cost(state.cost, state.k)  # the compiled pricing's form of the profile, packed once
        self.kv_bytes = state.cost.kv_bytes_per_token
        self.link_bytes_s = state.cost.host_link_gb_s * 1e9
        self.max_used = 0
        self.busy_s = 0.0            # time-weighted sums for batch-size and KV-utilisation statistics
        self.batch_time = 0.0
        self.kv_time = 0.0
        self.max_batch_seen = 0
        self.evictions = 0       # memory evictions (swap-outs or drops)
        self.displacements = 0   # … of them made for a waiting request (the rest: for a resident's growth)
        worst = _roundup(state.prompt_tokens + state.output_tokens + state.k + 1, config.block_size)
        if worst.size and worst.max() > config.kv_capacity_tokens:
            i = int(np.argmax(worst))
            raise LapsbenchError(
                f"engine.kv_capacity_tokens: {int(config.kv_capacity_tokens)} is smaller than request "
                f"{int(state.request_id[i])} needs ({int(worst[i])} tokens: prompt {int(state.prompt_tokens[i])} + "
                f"output {int(state.output_tokens[i])} + k + 1, in blocks of {config.block_size})")

    def evict(self, victim: int) -> float:
        """Preempt a resident under memory pressure; returns the engine stall it costs (swap-out)."""
        s = self.s
        self.used -= int(self.footprint[victim])
        self.resident[victim] = False
        s.preemptions[victim] += 1
        self.evictions += 1
        stall = 0.0
        if self.cfg.preemption == "swap":
            stall = float(self.footprint[victim]) * self.kv_bytes / self.link_bytes_s
            self.swapped[victim] = True
            self.swapped_tokens[victim] = self.footprint[victim]
        else:  # recompute: everything cached is lost; prefill prompt + generated again
            self.target[victim] = s.prompt_tokens[victim] + s.generated[victim]
            self.prefilled[victim] = 0
        s.preempted_s[victim] += stall
        self.footprint[victim] = 0
        return stall

    # ------------------------------------------------------------------ selection
    def select(self, active: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Members of the next step, their prefill chunks (0 = decode), and the swap stall it costs."""
        cfg, s = self.cfg, self.s
        if cfg.mode != "continuous" and self.static_batch.size:
            # a static / dynamic batch runs as formed: no ranking until it ends
            batch = self.static_batch if cfg.mode == "static" else self.static_batch[~s.done[self.static_batch]]
            return batch, np.zeros(batch.size, np.int64), 0.0
        order = self.bound.order(active, now)
        if cfg.mode == "continuous":
            if not self.policy.preemptive:
                # running = started and still holding its KV: a function of state alone, so the choice
                # repeats until something changes (an evicted request queues again in rank order)
                running = self.resident[order] & (s.steps[order] > 0)
                order = np.concatenate((order[running], order[~running]))
            return self._fill(order, cfg.max_batch, cfg.max_batch_tokens)
        # static / dynamic: form a batch from the queue
        members, chunks, stall = self._fill(order, cfg.max_batch, np.iinfo(np.int64).max, whole_prefill=True)
        self.static_batch = members
        return members, chunks, stall

    def _fill(self, order: np.ndarray, max_batch: int, budget: int,
              whole_prefill: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
        """Walk the ranking, admitting requests while the batch, token budget and KV memory allow.

        A request that does not fit stops admission (no overtaking), after evicting lower-ranked residents
        that are not in the step if that makes room — except, under guarded admission (continuous mode), a
        *waiting* request (one holding no KV): it may evict only residents whose displacement pays
        (`_displaceable`); when those cannot make room it waits for free memory, the waiting requests
        ranked below it wait behind it, and the walk goes on over the residents ranked below it, which run
        on the memory they hold."""
        s, k, block = self.s, self.s.k, self.cfg.block_size
        guarded = self.cfg.admission == "guarded" and not whole_prefill
        stall = 0.0
        if self.used > self.kv_cap:  # the capacity shrank (SD back on): evict the lowest ranked until it fits
            for v in reversed(order.tolist()):
                if self.used <= self.kv_cap:
                    break
                if self.resident[v]:
                    stall += self.evict(v)
        free = self.kv_cap - self.used
        victims: list[int] | None = None  # residents, lowest ranked first, built on first need
        position: dict[int, int] = {}
        behind: list[int] | None = None   # once a waiting request is blocked: the residents ranked below it
        chosen: list[int] = []
        chunks: list[int] = []
        tokens = 0
        pos = -1
        while len(chosen) < max_batch:
            if behind is None:
                pos += 1
                if pos >= order.size:
                    break
                i = int(order[pos])
            else:
                if not behind:
                    break
                i = behind.pop(0)
                if not self.resident[i]:  # evicted since: it waits too
                    continue
                pos = position[i]
            waiting = not self.resident[i]
            done_prefill = int(self.prefilled[i])  # live: a recompute eviction in this walk resets it
            left = int(self.target[i]) - done_prefill
            if whole_prefill:  # static / dynamic batches reserve their whole length up front
                need = int(_roundup(s.prompt_tokens[i] + s.output_tokens[i] + k + 1, block))
            if left <= 0:
                chunk, step_tokens = 0, k + 1
                if tokens + step_tokens > budget:
                    break
                if not whole_prefill:
                    need = int(_roundup(s.prompt_tokens[i] + s.generated[i] + k + 1, block))
            else:
                chunk = left if whole_prefill else min(left, budget - tokens)
                if chunk <= 0:
                    break
                step_tokens = chunk
                if not whole_prefill:
                    need = -(-(done_prefill + chunk + k + 1) // block) * block
            extra = need if waiting else need - int(self.footprint[i])
            if extra > free:
                if victims is None:
                    ranked = order.tolist()
                    position = {idx: p for p, idx in enumerate(ranked)}
                    taken = set(chosen)
                    victims = [v for v in reversed(ranked) if self.resident[v] and v not in taken]
                if guarded and waiting:
                    picks = self._displaceable(i, pos, victims, position, extra - free)
                    if picks is None:  # it waits for free memory; so do the waiting requests behind it
                        behind = [v for v in reversed(victims) if position[v] > pos]
                        continue
                    for v in picks:
                        victims.remove(v)
                        free += int(self.footprint[v])
                        stall += self.evict(v)
                        self.displacements += 1
                while extra > free and victims and position[victims[0]] > pos:
                    v = victims.pop(0)
                    free += int(self.footprint[v])
                    stall += self.evict(v)
                    self.displacements += waiting
                if extra > free:
                    break
            if self.swapped[i]:  # bring its KV back from host memory
                back = float(self.swapped_tokens[i]) * self.kv_bytes / self.link_bytes_s
                stall += back
                s.preempted_s[i] += back
                self.swapped[i] = False
            if waiting:  # it enters memory: its tenure starts
                self.entry_share[i] = self.served_share[i]
            free -= extra
            self.used += extra
            self.footprint[i] = need
            self.resident[i] = True
            chosen.append(i)
            chunks.append(chunk)
            tokens += step_tokens
            if victims and i in victims:
                victims.remove(i)
        return np.array(chosen, np.int64), np.array(chunks, np.int64), stall

    def displacement_cost(self, v: int) -> float:
        """Engine seconds that evicting resident `v` costs: swap — its KV copied out and, later, back in
        (the engine stalls for both); recompute — a prefill-only step of the tokens it has cached."""
        if self.cfg.preemption == "swap":
            out = float(self.footprint[v]) * self.kv_bytes / self.link_bytes_s
            return out + out
        s = self.s
        done_prefill = self.prefilled[v] >= self.target[v]
        lost = int(s.prompt_tokens[v] + s.generated[v]) if done_prefill else int(self.prefilled[v])
        return step_time_s(self.pack, 0, 0, 0, 1, lost, lost * lost, 0, 0, chunk_bucket_ms(self.pack, lost))

    def _displaceable(self, i: int, pos: int, victims: list[int], position: dict[int, int],
                      short: int) -> list[int] | None:
        """Guarded admission: the residents, lowest ranked first and ranked below waiting request `i` (at
        `pos`), whose displacement pays — cost <= admission_share × gain, the gain being the engine time the
        victim has been served beyond `i`, counted from its entry into memory (docs/batching.md §3) — until
        they free `short` slots; None when all of them cannot."""
        picks, got = [], 0
        share, served = self.cfg.admission_share, self.served_share
        for v in victims:
            if position[v] <= pos:
                break
            if self.displacement_cost(v) <= share * (served[v] - max(served[i], self.entry_share[v])):
                picks.append(v)
                got += int(self.footprint[v])
                if got >= short:
                    return picks
        return None

    # ------------------------------------------------------------------ stepping
    def _release(self, idx: np.ndarray) -> None:
        self.used -= int(self.footprint[idx].sum())
        self.footprint[idx] = 0
        self.resident[idx] = False

    def _switch_draft_memory(self, active: np.ndarray) -> None:
        """free_draft_memory, before admission: SD off while at least off_batch present requests are resident
        with their prefill complete; the capacity follows; turning on starts a new on-period."""
        n_dec = int((self.resident[active] & (self.prefilled[active] >= self.target[active])).sum())
        off = n_dec >= self.adaptive.off_batch
        if not off and self.sd_off:
            self.epoch += 1
        self.sd_off = off
        self.kv_cap = self.cap_off if off else self.cfg.kv_capacity_tokens

    def _draft_rebuild_s(self, pack, live_dec: np.ndarray, pf: np.ndarray, before: np.ndarray) -> float:
        """SD on (free_draft_memory): the draft prefill over the cached tokens of the members whose draft KV is
        not from this on-period; every member's draft KV is current afterwards."""
        s = self.s
        who = np.concatenate((live_dec, pf))
        cached = np.concatenate((s.prompt_tokens[live_dec] + s.generated[live_dec], before)).astype(np.int64)
        stale = (self.draft_epoch[who] != self.epoch) & (cached > 0)
        self.draft_epoch[who] = self.epoch
        c = cached[stale]
        self.rebuilt += int(stale.sum())
        self.rebuilt_tokens += int(c.sum())
        return float(draft_rebuild_s(pack, int(stale.sum()), int(c.sum()), int((c * c).sum())))

    def _adaptive_step(self, dec: np.ndarray, live_dec: np.ndarray, ctx: np.ndarray, prefill: tuple,
                       pf: np.ndarray, before: np.ndarray) -> tuple:
        """`[speculation] adaptive`: a K for each of the step's decoding rows (padding included) — one shared K
        (kchoice.choose_shared_k, goodput priced at every K) or, for per-request goodput, kchoice
        .goodput_per_request_k —, the mixed-K price, and the tokens min(draw, K) + 1 from the draws at the
        maximum k; returns (K per live decoding row, price, emitted before the output cap)."""
        s, P = self.s, self.adaptive
        pack = self.pack
        n = dec.size
        ctx_rows = np.append(ctx, 0).astype(np.int64)

        def price_of(ks: np.ndarray, pack=pack) -> float:
            return float(mixed_step_time_s(pack, np.append(ks, 0).astype(np.int64), ctx_rows, n, *prefill))

        live = ~s.done[dec]
        alpha = np.array([alpha_estimate(int(self.n_acc[i]), int(self.n_rej[i]), P.prior_alpha, P.prior_strength)
                          if ok else 0.0 for i, ok in zip(dec, live, strict=True)])
        remaining = np.where(live, s.output_tokens[dec] - s.generated[dec], 0).astype(np.int64)
        if P.free_draft:  # K = 0 while off (no draft prefill either), k while on (first rebuilding draft KV)
            ks = np.full(n, 0 if self.sd_off else P.k, np.int64)
            price = (price_of(ks, pack._replace(k=0)) if self.sd_off
                     else price_of(ks) + self._draft_rebuild_s(pack, live_dec, pf, before))
        elif P.code == GOODPUT and P.per_request:
            ks = np.zeros(n + 1, np.int64)
            goodput_per_request_k(pack, np.append(alpha, 0.0), np.append(remaining, 0), ctx_rows, n, P.k_max,
                                  prefill, np.zeros(n + 1, np.int64), np.zeros(n + 1),
                                  np.zeros((3, P.k_max), np.int64), ks)
            ks = ks[:n]
            price = price_of(ks)
        else:
            step_s = (np.array([price_of(np.full(n, kk)) for kk in range(P.k_max + 1)]) if P.code == GOODPUT
                      else np.zeros(P.k_max + 1))
            ks = np.full(n, int(choose_shared_k(P, n, alpha, remaining, step_s)), np.int64)
            price = price_of(ks)
        k_live = ks[live]
        draw = (self.acc.accepted(live_dec, s.decode_steps[live_dec], s.generated[live_dec]) if live_dec.size
                else np.zeros(0, np.int64))
        self.n_acc[live_dec] += np.minimum(draw, k_live)
        self.n_rej[live_dec] += draw < k_live
        if live_dec.size:
            self.k_rows += live_dec.size
            self.k_sum += int(k_live.sum())
            self.dec_steps += 1
            self.off_steps += not k_live.any()
        return k_live, price, np.minimum(draw, k_live) + 1

    def one_step(self, members: np.ndarray, chunks: np.ndarray, stall: float, now: float) -> tuple[float, np.ndarray]:
        """Run one engine step of `members`; returns the new time and the requests that finished."""
        s, k = self.s, self.s.k
        is_dec = chunks == 0
        dec, pf, c = members[is_dec], members[~is_dec], chunks[~is_dec]
        live_dec = dec[~s.done[dec]]
        ctx = s.prompt_tokens[dec] + s.generated[dec]
        before = self.prefilled[pf]
        if self.adaptive is not None:
            prefill = (pf.size, int(c.sum()), int((c * c).sum()), int((c * before).sum()), int(before.sum()),
                       sum(bucket_ms_of_chunks(self.pack.bucket_tokens, self.pack.bucket_ms, c).tolist(), 0.0))
            k, dt, emitted = self._adaptive_step(dec, live_dec, ctx, prefill, pf, before)
        else:
            emitted = (self.acc.emitted(live_dec, s.decode_steps[live_dec], s.generated[live_dec]) if live_dec.size
                       else np.zeros(0, np.int64))
            dt = step_time_s(self.pack, dec.size, int(ctx.sum()), int(ctx.max(initial=0)), pf.size, int(c.sum()),
                             int((c * c).sum()), int((c * before).sum()), int(before.sum()),
                             sum(bucket_ms_of_chunks(self.pack.bucket_tokens, self.pack.bucket_ms, c).tolist(), 0.0))
        emitted = np.minimum(emitted, s.output_tokens[live_dec] - s.generated[live_dec])
        now, took = now + (dt + stall), dt + stall
        self._record(took, members.size)
        s.generated[live_dec] += emitted
        s.decode_steps[live_dec] += 1
        s.drafted[live_dec] += k
        self.prefilled[pf] += c
        complete = pf[self.prefilled[pf] >= self.target[pf]]
        s.generated[complete] = np.minimum(s.generated[complete] + 1, s.output_tokens[complete])
        first = complete[np.isnan(s.first_token_s[complete])]
        s.first_token_s[first] = now
        served = np.concatenate((live_dec, pf))
        self._account(served, took, now, members.size)
        self.bound.observe(served, now)
        return now, self._finish(served, now)

    def _record(self, duration: float, batch_size: int) -> None:
        self.busy_s += duration
        self.batch_time += duration * batch_size
        self.kv_time += duration * self.used
        self.max_batch_seen = max(self.max_batch_seen, batch_size)

    def stats(self) -> dict[str, float]:
        """Time-weighted over busy time: mean batch size and KV-cache utilisation; their maxima; memory
        evictions per request, and those made for waiting requests (displacements)."""
        cap = self.cfg.kv_capacity_tokens
        busy = max(self.busy_s, 1e-300)
        stats = {
            "batch_size_mean": self.batch_time / busy,
            "batch_size_max": float(self.max_batch_seen),
            "kv_util_mean": self.kv_time / busy / cap if np.isfinite(cap) else float("nan"),
            "kv_util_max": self.max_used / cap if np.isfinite(cap) else float("nan"),
            "busy_s": self.busy_s,
            "evictions_mean": self.evictions / max(self.s.n, 1),
            "displacements_mean": self.displacements / max(self.s.n, 1),
        }
        if self.adaptive is not None:
            stats |= {"k_mean": self.k_sum / max(self.k_rows, 1),
                      "sd_off_share": self.off_steps / max(self.dec_steps, 1)}
        if self.free_draft:
            stats |= {"sd_turned_on": float(self.epoch), "draft_rebuilds_mean": self.rebuilt / max(self.s.n, 1),
                      "draft_rebuild_tokens_mean": self.rebuilt_tokens / max(self.s.n, 1)}
        return stats

    def _account(self, served: np.ndarray, dt: float, now: float, batch: int) -> None:
        s = self.s
        s.steps[served] += 1
        s.attained_s[served] += dt
        s.last_service_s[served] = now
        self.served_share[served] += dt / batch

    def _finish(self, served: np.ndarray, now: float) -> np.ndarray:
        s = self.s
        done = served[(s.generated[served] >= s.output_tokens[served]) & ~s.done[served]]
        s.done[done] = True
        if self.cfg.mode != "static":
            s.finish_s[done] = now
            self._release(done)
        return done

    # ------------------------------------------------------------------ the loop
    def run(self, progress: Callable[[int], None] | None = None) -> EngineState:
        """Serve every request, one step at a time."""
        s, cfg = self.s, self.cfg
        n, arrival = s.n, s.arrival_s
        self.bound = Bound(self.policy, s)
        now, admitted, finished = 0.0, 0, 0
        active = np.empty(0, np.int64)
        report = Throttled(progress, n) if progress is not None else None
        # Livelock guard: prefill tokens computed since a step last emitted a token, against the whole work
        # (prompt + output tokens) of the requests present.
        work_of = s.prompt_tokens + s.output_tokens
        stuck, work = 0, 0
        while finished < n:
            upto = int(np.searchsorted(arrival, now, side="right"))
            if upto > admitted:
                active = np.concatenate((active, np.arange(admitted, upto)))
                work += int(work_of[admitted:upto].sum())
                admitted = upto
            if active.size == 0 and not self.static_batch.size:
                now = float(arrival[admitted])
                continue
            if self.free_draft:
                self._switch_draft_memory(active)
            members, chunks, stall = self.select(active, now)
            assert members.size, "no request fits an empty engine: capacity checks are wrong"
            self._count_deselected(members)
            generated_before = int(s.generated[members].sum())
            now, done = self.one_step(members, chunks, stall, now)
            if done.size or int(s.generated[members].sum()) > generated_before:
                stuck = 0
            else:
                stuck += int(chunks.sum())
                if stuck > LIVELOCK_FACTOR * work:
                    raise LapsbenchError(livelock_message(self.policy.name, cfg.preemption, stuck, active.size))
            self.max_used = max(self.max_used, self.used)
            if self.check:
                self.assert_invariants()
            if cfg.mode == "static" and s.done[self.static_batch].all():
                s.finish_s[self.static_batch] = now  # the batch's results return together
                self._release(self.static_batch)
                self.static_batch = np.empty(0, np.int64)
            elif cfg.mode == "dynamic" and done.size:
                self.static_batch = np.empty(0, np.int64)  # re-form around the survivors
            if done.size:
                work -= int(work_of[done].sum())
                active = active[~np.isin(active, done)]
                finished += done.size
                if report is not None:
                    report(finished)
        if report is not None:
            report(finished)
        return s

    def _count_deselected(self, members: np.ndarray) -> None:
        """A request in the previous step but not this one, unfinished and still resident, was preempted
        by the policy (no memory cost; evictions are counted where they happen)."""
        s, prev = self.s, self.prev_members
        in_step = np.zeros(s.n, bool)
        in_step[members] = True
        dropped = prev[~in_step[prev] & ~s.done[prev] & self.resident[prev]]
        s.preemptions[dropped] += 1
        self.prev_members = members

    def assert_invariants(self) -> None:
        assert self.used <= self.kv_cap, (self.used, self.kv_cap)
        assert self.used == int(self.footprint[self.resident].sum())
        assert not (self.resident & self.swapped).any()
