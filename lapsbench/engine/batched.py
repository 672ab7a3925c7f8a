"""The batched engine: static, dynamic and continuous (iteration-level) batching with KV-cache memory, compiled.

One engine step serves a batch: every decoding member takes one speculative step (k draft forwards and one
verify forward over all members' k + 1 tokens), and in continuous mode requests being prefilled get a chunk of
their prompt within the step's token budget (chunked prefill); finishing a prefill emits the request's first
token, and a request that finishes mid-step leaves at the step's end. Modes (SSJF's semantics for static and
dynamic): static — a batch of up to `max_batch` requests in scheduler order runs until all its members finish,
a finished member stays in the batch as padding (priced) and every member completes at the batch's end;
dynamic — the batch runs until its first member finishes, then re-forms; continuous — every step re-forms the
batch in scheduler order (non-preemptive schedulers keep their running requests first) up to `max_batch`
requests, `max_batch_tokens` tokens and the free KV memory (lapsbench/engine/admission.py).

The plan of one step (`plan_step`, then `end_step`):
  1. admit arrivals and bring the ranking up to date: the present requests are kept sorted by (keys, index);
     a key changes only when its request is served or when the scheduler's `prerank` / `observe` return True,
     so only the served requests are re-keyed and merged back, and a True return re-sorts everyone;
  2. select the members: a running static / dynamic batch as formed, else `fill` walks the ranking (members,
     their prefill chunks, and the swap stall of the evictions and swap-ins it made);
  3. count the requests the step dropped (in the previous step, unfinished, still resident) as preempted;
  4. price the step (lapsbench/models/pricing.py) and draw each decoding member's tokens from the step table;
  — the step runs: `now += price + stall` (or an executor runs it and says when it ended: replay) —
  5. account: serve members, statistics; the scheduler observes the served requests (ascending index);
  6. finish: completed requests leave (a static batch's together), the livelock guard, re-keying.

A run is one call of `run_loop` (the GIL released; progress through `shared[FINISHED]`, Ctrl-C through
`shared[STOP]`). A replay (`executor`) calls the same compiled loop one half-step at a time (shared[MODE]: PLAN,
then END), the executor running each step in between.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

from lapsbench.engine.adaptive import (
    choose_and_price,
    draft_memory_stats,
    draw_adaptive,
    new_adapt,
    record_k,
    switch_draft_memory,
)
from lapsbench.engine.admission import fill, roundup
from lapsbench.engine.batched_state import (
    CONTINUOUS,
    ERR_EMPTY,
    ERR_INVARIANT,
    ERR_LIVELOCK,
    ERR_TABLE,
    IDLE,
    LIVELOCK_FACTOR,
    LOOP,
    MODE_CODE,
    NO_BUDGET,
    OK,
    STATIC,
    STOPPED,
    Config,
    new_memory,
    new_work,
)
from lapsbench.engine.batched_step import account, draw, finish, price
from lapsbench.engine.context import BatchStep, Results, RunContext, StepExecutor
from lapsbench.errors import LapsbenchError
from lapsbench.models.pricing import pack_cost
from lapsbench.progress import run_polled
from lapsbench.schedulers import dispatch
from lapsbench.schedulers.api import RequestView

FINISHED, STOP, MODE = 0, 1, 2  # the slots of run_loop's `shared` array
# shared[MODE]: RUN every step until done (a simulation); PLAN or END one half of one step, for a replay, whose
# executor runs the step in between: the replay and the simulation run the same compiled loop
RUN, PLAN, END = 0, 1, 2


# ---------------------------------------------------------------------------------------------- ordering
@njit(cache=True, inline="always")
def _copy(dst, d0, src, s0, count):
    """dst[d0:d0 + count] = src[s0:s0 + count] (slicing would need numba's runtime, off in the loop)."""
    for j in range(count):
        dst[d0 + j] = src[s0 + j]


@njit(cache=True, inline="always")
def _set_key(code, P, R, keys, i):
    k0, k1, k2 = dispatch.key(code, P, R, i)
    keys[i, 0] = k0
    keys[i, 1] = k1
    keys[i, 2] = k2


@njit(cache=True)
def _before(keys, a, b):
    return dispatch.key_less(keys[a, 0], keys[a, 1], keys[a, 2], a, keys[b, 0], keys[b, 1], keys[b, 2], b)


@njit(cache=True, inline="always")
def _less(keys, a, b, by_index):
    """The sort order: by (keys, index), or by index alone."""
    if by_index:
        return a < b
    return _before(keys, a, b)


@njit(cache=True)
def _merge_pass(keys, src, dst, m, width, by_index):
    lo = 0
    while lo < m:
        mid, hi = min(lo + width, m), min(lo + 2 * width, m)
        i, j, o = lo, mid, lo
        while i < mid and j < hi:
            if _less(keys, src[j], src[i], by_index):
                dst[o] = src[j]
                j += 1
            else:
                dst[o] = src[i]
                i += 1
            o += 1
        _copy(dst, o, src, i, mid - i)
        o += mid - i
        _copy(dst, o, src, j, hi - j)
        lo = hi


@njit(cache=True)
def _sort(keys, a, m, tmp, by_index):
    """Sort a[:m] by (keys, index), or by index when `by_index`: insertion sort for short runs, bottom-up
    merge sort otherwise (allocates nothing: `tmp` is the scratch)."""
    if m <= 32:
        for j in range(1, m):
            x = a[j]
            p = j - 1
            while p >= 0 and _less(keys, x, a[p], by_index):
                a[p + 1] = a[p]
                p -= 1
            a[p + 1] = x
        return
    src, dst = a, tmp
    in_tmp = False
    width = 1
    while width < m:
        _merge_pass(keys, src, dst, m, width, by_index)
        src, dst = dst, src
        in_tmp = not in_tmp
        width *= 2
    if in_tmp:
        _copy(a, 0, tmp, 0, m)


@njit(cache=True, _nrt=False)
def _reorder(W, R, L):
    """Drop finished requests and the W.add[:nadd] ones from the sorted order[:no], then merge `add` (re-keyed)
    back in."""
    order, add, na = W.order, W.add, L.nadd
    for j in range(na):
        W.moving[add[j]] = True
    w = 0
    for p in range(L.no):
        i = order[p]
        if not (W.moving[i] or R.done[i]):
            order[w] = i
            w += 1
    for j in range(na):
        W.moving[add[j]] = False
    _sort(W.keys, add, na, W.tmp, False)
    i, j, o = 0, 0, 0
    while i < w and j < na:
        if _before(W.keys, add[j], order[i]):
            W.tmp[o] = add[j]
            j += 1
        else:
            W.tmp[o] = order[i]
            i += 1
        o += 1
    _copy(W.tmp, o, order, i, w - i)
    o += w - i
    _copy(W.tmp, o, add, j, na - j)
    o += na - j
    _copy(order, 0, W.tmp, 0, o)
    L.no = o


@njit(cache=True)
def _rekey_all(code, P, R, W, L):
    for j in range(L.na):
        _set_key(code, P, R, W.keys, W.active[j])
        W.order[j] = W.active[j]
    _sort(W.keys, W.order, L.na, W.tmp, False)
    L.no = L.na


@njit(cache=True, inline="always")
def _admit(code, P, R, W, L):
    """Arrivals join the present requests and those to (re-)key; the ranking is brought up to date."""
    n = R.arrival_s.size
    while L.admitted < n and R.arrival_s[L.admitted] <= L.now:
        a = L.admitted
        W.active[L.na] = a
        L.work += R.prompt_tokens[a] + R.output_tokens[a]
        L.na += 1
        W.add[L.nadd] = a
        L.nadd += 1
        L.admitted += 1
    if L.everyone:
        _rekey_all(code, P, R, W, L)
    elif L.nadd or L.dropped:
        for j in range(L.nadd):
            _set_key(code, P, R, W.keys, W.add[j])
        _reorder(W, R, L)
    L.nadd, L.dropped, L.everyone = 0, False, False


# ---------------------------------------------------------------------------------------------- selection
@njit(cache=True, inline="always")
def _running_first(R, M, W, L):
    """Non-preemptive continuous batching: running requests (started, holding KV) first, stable, in W.part."""
    w = 0
    for running in (True, False):
        for p in range(L.no):
            i = W.order[p]
            if (M.resident[i] and R.steps[i] > 0) == running:
                W.part[w] = i
                w += 1
    return W.part


@njit(cache=True, inline="always")
def _select(P, R, out, M, W, C, L, pack):
    """This step's members (W.members[:L.nm]) and chunks; returns the swap stall it costs."""
    if C.mode != CONTINUOUS and L.static_n > 0:  # a static / dynamic batch runs as formed
        nm = 0
        for j in range(L.static_n):
            i = W.static_batch[j]
            if C.mode == STATIC or not R.done[i]:  # dynamic: its finished members have left
                W.members[nm] = i
                W.chunks[nm] = 0
                nm += 1
        L.nm = nm
        return 0.0
    if dispatch.ranks_with_side_effects(C.code) and dispatch.prerank(C.code, P, R, W.active, L.na, L.now):
        _rekey_all(C.code, P, R, W, L)
    ranking = W.order
    if C.mode == CONTINUOUS and not C.preemptive:
        ranking = _running_first(R, M, W, L)
    whole = C.mode != CONTINUOUS  # static / dynamic batches reserve their whole length up front
    nm, stall = fill(R, out, M, W, C, L, pack, ranking, L.no, C.max_batch, NO_BUDGET if whole else C.budget, whole)
    if whole:
        _copy(W.static_batch, 0, W.members, 0, nm)
        L.static_n = nm
    L.nm = nm
    return stall


@njit(cache=True, _nrt=False)
def _count_dropped(R, out, M, W, L):
    """A request in the previous step but not this one, unfinished and still resident, was preempted by the
    scheduler (evictions are counted where they happen)."""
    nm = L.nm
    for j in range(nm):
        W.in_step[W.members[j]] = True
    for j in range(L.prev_n):
        i = W.prev_members[j]
        if not W.in_step[i] and not R.done[i] and M.resident[i]:
            out.preemptions[i] += 1
    for j in range(nm):
        W.in_step[W.members[j]] = False
    _copy(W.prev_members, 0, W.members, 0, nm)
    L.prev_n = nm


# ---------------------------------------------------------------------------------------------- a step
@njit(cache=True, _nrt=False, inline="always")
def plan_step(P, R, out, M, W, T, A, pack, C, state):
    """Phases 1-4: decide the step and price it (L.price = time + stall). IDLE: nobody present (the clock
    must move to the next arrival). Under `[speculation] adaptive` (A.on) phase 4 is `choose_k` (one K for
    the step's decoding rows), its mixed-K price, and the draw at that K (lapsbench/engine/adaptive.py)."""
    L = state[0]
    _admit(C.code, P, R, W, L)
    if L.na == 0 and L.static_n == 0:
        return IDLE
    if A.P.free_draft:  # SD on or off before admission: it sets the KV capacity (lapsbench/engine/adaptive.py)
        switch_draft_memory(M, W, A, L)
    stall = _select(P, R, out, M, W, C, L, pack)
    if L.nm == 0:
        return ERR_EMPTY
    _count_dropped(R, out, M, W, L)
    if A.on:
        L.price = choose_and_price(R, M, W, A, pack, L.nm) + stall
        return draw_adaptive(R, W, A, L.nm)
    L.price = price(R, M, W, pack, L.nm) + stall
    return draw(R, W, T[0], T[1], L.nm)


@njit(cache=True, _nrt=False, inline="always")
def end_step(P, R, out, M, W, A, C, state, now, took):
    """Phases 5-6, the step having ended at `now` after `took` seconds."""
    L = state[0]
    L.now = now
    if A.on:
        record_k(L, W, A, L.nm)
    account(R, out, M, W, C, L, A, now, took)
    _sort(W.keys, W.served, L.n_served, W.tmp, True)
    code = C.code
    L.everyone = dispatch.observes(code) and dispatch.observe(code, P, R, W.served, L.n_served, now)
    return finish(R, out, M, W, C, L, now, not dispatch.keys_static(code))


# `_nrt=False`: the loop allocates nothing (every array comes from the caller), and without the runtime numba
# emits no reference counting — with it, the arrays of the state tuples are incref'd and decref'd (atomically)
# around tuple accesses and helper calls, many times per step (benchmarks/README.md).
@njit(cache=True, _nrt=False, nogil=True)
def run_loop(P, R, out, M, W, T, A, pack, C, state, shared):
    """RUN: serve until every request has finished (returns OK), or until shared[STOP] is set (STOPPED); < 0 =
    error. PLAN: plan the next step and return plan_step's status. END: end the planned step at L.now, L.price
    seconds after it began (both set by the replay), and return end_step's status."""
    L = state[0]
    n = R.arrival_s.size
    mode = shared[MODE]
    while L.finished < n:
        if mode != END:
            if shared[STOP] != 0:
                return STOPPED
            status = plan_step(P, R, out, M, W, T, A, pack, C, state)
            if mode == PLAN:
                return status
            if status == IDLE:
                L.now = R.arrival_s[L.admitted]
                continue
            if status != OK:
                return status
            L.now = L.now + L.price  # the step ends
        status = end_step(P, R, out, M, W, A, C, state, L.now, L.price)
        if mode == END or status != OK:
            return status
        shared[FINISHED] = L.finished
    return OK


# ------------------------------------------------------------------------------------------------ Python side
def livelock_message(policy: str, preemption: str, stuck_tokens: int, present: int) -> str:
    return (f"scheduler {policy}: livelock — {stuck_tokens:,} prefill tokens computed without any request "
            f"emitting a token (more than {LIVELOCK_FACTOR}x the prompt + output tokens of the {present} requests "
            f"present): with {preemption} preemption and memory this tight, each partially prefilled request is "
            "evicted before its prefill completes; use preemption = \"swap\", a larger engine.max_batch_tokens "
            "or more KV capacity")


def check_capacity(R: RequestView, k: int, cfg, request_id: np.ndarray | None = None) -> None:
    """LapsbenchError when a request could never fit the KV capacity on its own."""
    worst = roundup(R.prompt_tokens + R.output_tokens + k + 1, cfg.block_size)
    if worst.size and worst.max() > cfg.kv_capacity_tokens:
        i = int(np.argmax(worst))
        rid = int(request_id[i]) if request_id is not None else i
        raise LapsbenchError(
            f"engine.kv_capacity_tokens: {int(cfg.kv_capacity_tokens)} is smaller than request {rid} needs "
            f"({int(worst[i])} tokens: prompt {int(R.prompt_tokens[i])} + output {int(R.output_tokens[i])} + k + 1, "
            f"in blocks of {cfg.block_size})")


def _replay(args: tuple, executor: StepExecutor, progress: Callable[[int], None] | None) -> int:
    """run_loop one half-step at a time from Python (PLAN, then END), each step run by `executor` in between,
    whose clock gives the time."""
    P, R, out, M, W, T, A, pack, C, state, shared = args
    L = state[0]
    n = R.arrival_s.size
    while L["finished"] < n:
        shared[MODE] = PLAN
        status = run_loop(*args)
        if status == IDLE:
            L["now"] = executor.wait_until(float(R.arrival_s[L["admitted"]]))
            continue
        if status != OK:
            return status
        nm = int(L["nm"])
        members, chunks, emitted = W.members[:nm], W.chunks[:nm], W.emitted[:nm]
        dec = members[(chunks == 0) & (emitted >= 0)]
        pf, c = members[chunks > 0], chunks[chunks > 0]
        before = M.prefilled[pf].copy()
        k = int(A.ks[:nm].max(initial=0)) if A.on else C.k
        step = BatchStep(k, dec, R.prompt_tokens[dec] + R.generated[dec], emitted[(chunks == 0) & (emitted >= 0)],
                         pf, c, before, before + c >= M.target[pf], M.resident)
        L["now"], L["price"] = executor.step(step, float(L["now"]), float(L["price"]))
        shared[MODE] = END
        status = run_loop(*args)
        if status != OK:
            return status
        if progress is not None:
            progress(int(L["finished"]))
    return OK


def run_batched(R: RequestView, out: Results, ctx: RunContext, code: int, P, preemptive: bool, name: str = "",
                progress: Callable[[int], None] | None = None, check: bool = False,
                executor: StepExecutor | None = None, request_id: np.ndarray | None = None) -> dict[str, float]:
    """Serve every request of `R` under ctx.batching and the scheduler packed in `P`; fills `R`'s progress and
    `out`; returns the engine statistics (time-weighted over busy time: mean batch size and KV-cache
    utilisation; their maxima; memory evictions per request, and those made for waiting requests). With an
    `executor` (replay) each step is also executed and the executor's clock says when it ended. `check`:
    assert the KV invariants after every step. `name`, `request_id`: the scheduler and the requests' ids, for
    messages."""
    cfg, n = ctx.batching, R.arrival_s.size
    check_capacity(R, ctx.k, cfg, request_id)
    if n > 1 and np.any(np.diff(R.arrival_s) < 0):
        raise ValueError("arrivals must be in order")
    assert ctx.table.offset.size == n + 1, "the step table is for another workload"
    C = Config(MODE_CODE[cfg.mode], int(cfg.max_batch), int(cfg.max_batch_tokens), int(cfg.block_size),
               cfg.preemption == "recompute", int(ctx.k), bool(preemptive), bool(check), cfg.admission == "guarded",
               float(cfg.kv_capacity_tokens), float(ctx.cost.kv_bytes_per_token), float(ctx.cost.host_link_gb_s * 1e9),
               float(cfg.admission_share), int(code))
    # the tokens in the table's own dtype (int16 below 32,767 tokens, else int32): numba compiles one loop per
    # dtype, and a 64-bit copy would cost a pass over the table on every run
    T = (np.require(ctx.table.offset, np.int64, ["C_CONTIGUOUS", "WRITEABLE"]),
         np.require(ctx.table.cum_tokens, requirements=["C_CONTIGUOUS", "WRITEABLE"]))
    state = np.zeros(1, LOOP)
    state["kv_cap"] = C.kv_cap
    shared = np.zeros(3, np.int64)  # FINISHED, STOP, MODE (RUN)
    pack = pack_cost(ctx.cost, ctx.k)
    A = new_adapt(ctx, R.output_tokens, pack)
    args = (P, R, out, new_memory(R.prompt_tokens), new_work(n, cfg.max_batch), T, A, pack, C, state, shared)
    if executor is None:
        status = run_polled(run_loop, args, shared, FINISHED, STOP, progress)
    else:
        status = _replay(args, executor, progress)
    L = state[0]
    if status == ERR_EMPTY:
        raise AssertionError("no request fits an empty engine: capacity checks are wrong")
    if status == ERR_TABLE:
        raise AssertionError("a request took more decode steps than its step table holds")
    if status == ERR_INVARIANT:
        raise AssertionError("KV-cache invariant violated")
    if status == ERR_LIVELOCK:
        raise LapsbenchError(livelock_message(name, cfg.preemption, int(L["stuck"]), int(L["na"])))
    assert status == OK, status
    cap, busy = cfg.kv_capacity_tokens, max(float(L["busy"]), 1e-300)
    stats = {
        "batch_size_mean": float(L["batch_time"]) / busy,
        "batch_size_max": float(L["max_batch_seen"]),
        "kv_util_mean": float(L["kv_time"]) / busy / cap if np.isfinite(cap) else float("nan"),
        "kv_util_max": float(L["max_used"]) / cap if np.isfinite(cap) else float("nan"),
        "busy_s": float(L["busy"]),
        "evictions_mean": int(L["evictions"]) / max(n, 1),
        "displacements_mean": int(L["displaced"]) / max(n, 1),
    }
    if A.on:  # adaptive K: mean K over live decoding request-steps, share of decoding steps with SD off
        stats["k_mean"] = int(L["k_sum"]) / max(int(L["k_rows"]), 1)
        stats["sd_off_share"] = int(L["off_steps"]) / max(int(L["dec_steps"]), 1)
        if A.P.free_draft:
            stats.update(draft_memory_stats(A, n))
    return stats
