"""The batched engine's run loop, compiled (numba): one engine step at a time, bit for bit what
`BatchedEngine.run(max_rounds=1)` (lapsbench/batching.py, the specification) does.

Every step: admit arrivals, rank (the policy's compiled `prerank` wherever the Python engine calls `rank`),
form the batch (the same admission walk: no overtaking, eviction of the lowest-ranked residents that are
not in the step — for a waiting request under guarded admission only those whose displacement pays —,
swap stalls out and back in, recompute resets the prefill target), price it
(costkernel.step_time_s with every prefill feature, as one_step's sd_step_s call), draw each decoding
member's tokens from the replication's step table, account, let the policy observe (served requests in
ascending index, before finishing marks them done), finish.

Acceptance comes from the step table (lapsbench.steptable): for a process that is not position dependent
a request's decode step j emits min(tok(offset[i] + 1 + j), output[i] − generated[i]), tok(row) the table's
tokens of that row (row 0 is the prefill) — also after a recompute, whose extra token only shortens the
request. Position-dependent acceptance, a policy without a kernel, or a mode other than static / dynamic /
continuous run on the Python engine.

The ranking: keys are cached per request and the present requests kept sorted by (keys, index) — the same
total order as engine.rank_order. A request's keys change only when it is served or when `prerank` /
`observe` return True (lapsbench/schedulers/dispatch.py's contract), so after a step only the served requests are
re-keyed and merged back; a True return re-keys and re-sorts everyone present.

A run is one call: the loop keeps the finished count current in `li` and releases the GIL, and
lapsbench.progress.run_polled reads it from the calling thread (progress without leaving the loop); its
other scalars are written back to `li` / `lf` at the end.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

from lapsbench.costkernel import decode_step_time_s, pack_cost, step_time_s
from lapsbench.errors import LapsbenchError
from lapsbench.progress import run_polled
from lapsbench.schedulers import dispatch
from lapsbench.schedulers.stepwise import request_view

STATIC, DYNAMIC, CONTINUOUS = 0, 1, 2
MODE_CODE = {"static": STATIC, "dynamic": DYNAMIC, "continuous": CONTINUOUS}

# configuration ints (ci) and floats (cf)
(CI_MODE, CI_MAX_BATCH, CI_BUDGET, CI_BLOCK, CI_RECOMPUTE, CI_K, CI_PREEMPTIVE, CI_CHECK, CI_GUARDED) = range(9)
CF_KV_CAP, CF_KV_BYTES, CF_LINK, CF_SHARE = range(4)
# loop state ints (li) and floats (lf); LI_FINISHED is kept current (read by another thread for progress),
# LI_STOP set by the caller ends the run early (Ctrl-C)
(LI_ADMITTED, LI_FINISHED, LI_NA, LI_NO, LI_USED, LI_MAX_USED, LI_MAX_BATCH, LI_STATIC_N, LI_PREV_N, LI_STEPS,
 LI_NADD, LI_DROPPED, LI_EVERYONE, LI_STUCK, LI_WORK, LI_EVICTIONS, LI_DISPLACED, LI_STOP) = range(18)
LF_NOW, LF_BUSY, LF_BATCH_TIME, LF_KV_TIME = range(4)

DONE, STOPPED, ERR_EMPTY, ERR_TABLE, ERR_INVARIANT, ERR_LIVELOCK = 0, 1, -1, -2, -3, -4
LIVELOCK_FACTOR = 8  # prefill tokens without progress, in units of the present requests' whole work (batching.py)
NO_BUDGET = np.iinfo(np.int64).max


@njit(cache=True, _nrt=True)
def _step_time_s(packed, n_decode, context_decode, n_prefill, prefill_tokens, prefill_tokens_sq,
                 prefill_tokens_context, prefill_context, context_max):
    """one_step's price: costkernel.step_time_s with every prefill feature — for a step without prefill
    (most steps) the same float as the decode part alone plus 0.0 (sd_step_s adds prefill_s = 0.0), which
    skips pricing an empty prefill. With numba's runtime on (the kernel may allocate), callable from
    run_loop (without)."""
    if n_prefill == 0:
        return decode_step_time_s(packed, n_decode, context_decode, context_max) + 0.0
    return step_time_s(packed, n_decode, context_decode, n_prefill, prefill_tokens, prefill_tokens_sq,
                       prefill_tokens_context, prefill_context, context_max)


# ---------------------------------------------------------------------------------------------- ordering
@njit(cache=True, inline="always")
def _set_key(code, P, S, keys, i):
    k0, k1, k2 = dispatch.key(code, P, S, i)
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
        lo = 0
        while lo < m:
            mid = min(lo + width, m)
            hi = min(lo + 2 * width, m)
            i, j, o = lo, mid, lo
            while i < mid and j < hi:
                if _less(keys, src[j], src[i], by_index):
                    dst[o] = src[j]
                    j += 1
                else:
                    dst[o] = src[i]
                    i += 1
                o += 1
            while i < mid:
                dst[o] = src[i]
                i += 1
                o += 1
            while j < hi:
                dst[o] = src[j]
                j += 1
                o += 1
            lo = hi
        src, dst = dst, src
        in_tmp = not in_tmp
        width *= 2
    if in_tmp:
        for j in range(m):
            a[j] = tmp[j]


@njit(cache=True, inline="always")
def _reorder(keys, order, no, add, na, moving, done, tmp):
    """Drop finished requests and the `add[:na]` ones from the sorted `order[:no]`, then merge `add` (re-keyed)
    back in. Returns the new length."""
    for j in range(na):
        moving[add[j]] = True
    w = 0
    for p in range(no):
        i = order[p]
        if moving[i] or done[i]:
            continue
        order[w] = i
        w += 1
    for j in range(na):
        moving[add[j]] = False
    _sort(keys, add, na, tmp, False)
    i, j, o = 0, 0, 0
    while i < w and j < na:
        if _before(keys, add[j], order[i]):
            tmp[o] = add[j]
            j += 1
        else:
            tmp[o] = order[i]
            i += 1
        o += 1
    while i < w:
        tmp[o] = order[i]
        i += 1
        o += 1
    while j < na:
        tmp[o] = add[j]
        j += 1
        o += 1
    for j in range(o):
        order[j] = tmp[j]
    return o


@njit(cache=True)
def _rekey_all(code, P, S, keys, active, na, order, tmp):
    for j in range(na):
        _set_key(code, P, S, keys, active[j])
        order[j] = active[j]
    _sort(keys, order, na, tmp, False)
    return na


# ------------------------------------------------------------------------------------------- admission
@njit(cache=True)
def _roundup(tokens, block):
    return -(-tokens // block) * block


@njit(cache=True, inline="always")
def _evict(S, E, ci, cf, li, v):
    """BatchedEngine.evict: preempt resident v; returns the swap-out stall."""
    fp = E[9][v]
    li[LI_USED] -= fp
    E[6][v] = False
    E[2][v] += 1
    li[LI_EVICTIONS] += 1
    stall = 0.0
    if ci[CI_RECOMPUTE] == 0:
        stall = float(fp) * cf[CF_KV_BYTES] / cf[CF_LINK]
        E[7][v] = True
        E[8][v] = fp
    else:
        E[5][v] = S[1][v] + S[3][v]
        E[4][v] = 0
    E[3][v] += stall
    E[9][v] = 0
    return stall


@njit(cache=True)
def _displacement_cost(S, E, ci, cf, packed, v):
    """BatchedEngine.displacement_cost: engine seconds that evicting resident v costs."""
    if ci[CI_RECOMPUTE] == 0:
        out = float(E[9][v]) * cf[CF_KV_BYTES] / cf[CF_LINK]
        return out + out
    lost = S[1][v] + S[3][v] if E[4][v] >= E[5][v] else E[4][v]
    return _step_time_s(packed, 0, 0, 1, lost, lost * lost, 0, 0, 0)


@njit(cache=True, inline="always")
def _fill(S, E, W, ci, cf, li, order, no, max_batch, budget, whole, packed):
    """BatchedEngine._fill over the ranking `order[:no]`: members and chunks into W[5], W[6]; returns
    (members, stall)."""
    prompt, output, generated = S[1], S[2], S[3]
    prefilled, target, resident, swapped, swapped_tokens, footprint = E[4], E[5], E[6], E[7], E[8], E[9]
    served_share, entry_share = E[10], E[11]
    members, chunks, victims, vpos, chosen = W[5], W[6], W[11], W[12], W[13]
    k, block = ci[CI_K], ci[CI_BLOCK]
    guarded = ci[CI_GUARDED] != 0 and not whole
    share = cf[CF_SHARE]
    free = cf[CF_KV_CAP] - float(li[LI_USED])
    # until a waiting request is blocked, each request examined joins or ends the walk: at most max_batch + 1
    ncand = min(no, max_batch + 1)
    nch = 0
    stall = 0.0
    tokens = 0
    built = False
    vh, vn = 0, 0
    pos = -1
    blocked = False  # a waiting request was blocked: the walk goes on over the residents below it (victims[bq])
    bq = -1
    while nch < max_batch:
        if not blocked:
            pos += 1
            if pos >= ncand:
                break
            i = order[pos]
        else:
            while bq >= 0 and (chosen[victims[bq]] or not resident[victims[bq]]):
                bq -= 1
            if bq < 0:
                break
            i = victims[bq]
            pos = vpos[bq]
            bq -= 1
        waiting = not resident[i]
        done_prefill = prefilled[i]
        left = target[i] - done_prefill
        if left <= 0:
            chunk = 0
            step_tokens = k + 1
            if tokens + step_tokens > budget:
                break
            if whole:
                need = _roundup(prompt[i] + output[i] + k + 1, block)
            else:
                need = _roundup(prompt[i] + generated[i] + k + 1, block)
        else:
            chunk = left if whole else min(left, budget - tokens)
            if chunk <= 0:
                break
            step_tokens = chunk
            if whole:
                need = _roundup(prompt[i] + output[i] + k + 1, block)
            else:
                need = _roundup(done_prefill + chunk + k + 1, block)
        extra = need if waiting else need - footprint[i]
        if extra > free:
            if not built:  # residents not in the step, lowest ranked first, over the whole ranking
                built = True
                for p in range(no - 1, -1, -1):
                    v = order[p]
                    if resident[v] and not chosen[v]:
                        victims[vn] = v
                        vpos[vn] = p
                        vn += 1
            if guarded and waiting:
                # BatchedEngine._displaceable: victims whose displacement pays, lowest ranked first
                short = extra - free
                got = 0
                last = -1
                for q in range(vh, vn):
                    v = victims[q]
                    if chosen[v] or not resident[v]:
                        continue
                    if vpos[q] <= pos:
                        break
                    gain = served_share[v] - max(served_share[i], entry_share[v])
                    if _displacement_cost(S, E, ci, cf, packed, v) <= share * gain:
                        got += footprint[v]
                        if got >= short:
                            last = q
                            break
                if last < 0:  # it waits for free memory; so do the waiting requests behind it
                    blocked = True
                    bq = vn - 1
                    while bq >= 0 and vpos[bq] <= pos:
                        bq -= 1
                    continue
                for q in range(vh, last + 1):
                    v = victims[q]
                    if chosen[v] or not resident[v]:
                        continue
                    gain = served_share[v] - max(served_share[i], entry_share[v])
                    if _displacement_cost(S, E, ci, cf, packed, v) <= share * gain:
                        free += footprint[v]
                        stall += _evict(S, E, ci, cf, li, v)
                        li[LI_DISPLACED] += 1
            while extra > free:
                while vh < vn and (chosen[victims[vh]] or not resident[victims[vh]]):  # admitted or evicted since
                    vh += 1
                if vh >= vn or vpos[vh] <= pos:
                    break
                v = victims[vh]
                vh += 1
                free += footprint[v]
                stall += _evict(S, E, ci, cf, li, v)
                if waiting:
                    li[LI_DISPLACED] += 1
            if extra > free:
                break
        if swapped[i]:  # bring its KV back from host memory
            back = float(swapped_tokens[i]) * cf[CF_KV_BYTES] / cf[CF_LINK]
            stall += back
            E[3][i] += back
            swapped[i] = False
        if waiting:  # it enters memory: its tenure starts
            entry_share[i] = served_share[i]
        free -= extra
        li[LI_USED] += extra
        footprint[i] = need
        resident[i] = True
        members[nch] = i
        chunks[nch] = chunk
        nch += 1
        chosen[i] = True
        tokens += step_tokens
    for j in range(nch):
        chosen[members[j]] = False
    return nch, stall


@njit(cache=True)
def _invariants_hold(E, cap, used, n):
    total = 0
    for i in range(n):
        if E[6][i]:
            total += E[9][i]
            if E[7][i]:
                return False
    return used <= cap and used == total


# ------------------------------------------------------------------------------------------------ the loop
# `_nrt=False`: the loop allocates nothing (every array comes from the caller), and without the runtime numba
# emits no reference counting — with it, the ~50 arrays of the P / S / E / W tuples are incref'd and decref'd
# (atomically) around tuple accesses and helper calls, many times per step: measured ~7x slower. Helpers it
# calls inherit the setting; the step pricing, which may allocate, runs with the runtime (_step_time_s).
@njit(cache=True, _nrt=False, nogil=True)
def run_loop(code, P, S, E, W, T, packed, ci, cf, li, lf):
    """Serve until every request has finished (returns DONE), or until li[LI_STOP] is set (returns STOPPED);
    < 0 = error."""
    ranks, observes_steps = dispatch.ranks_with_side_effects(code), dispatch.observes(code)
    rekey = not dispatch.keys_static(code)
    arrival, prompt, output, generated, steps, decode_steps, drafted, attained, last_service, done = S
    first_token, finish, preemptions = E[0], E[1], E[2]
    prefilled, target, resident, footprint, served_share = E[4], E[5], E[6], E[9], E[10]
    active, order, keys, static_batch, prev_members, members, chunks, served, add, tmp, part = W[:11]
    moving, in_step = W[14], W[15]
    offset, cum = T
    n = arrival.size
    mode, max_batch, budget = ci[CI_MODE], ci[CI_MAX_BATCH], ci[CI_BUDGET]
    preemptive, check = ci[CI_PREEMPTIVE] != 0, ci[CI_CHECK] != 0
    cap = cf[CF_KV_CAP]
    admitted, finished, na, no = li[LI_ADMITTED], li[LI_FINISHED], li[LI_NA], li[LI_NO]
    static_n, prev_n, nadd = li[LI_STATIC_N], li[LI_PREV_N], li[LI_NADD]
    dropped, everyone = li[LI_DROPPED] != 0, li[LI_EVERYONE] != 0
    stuck, work = li[LI_STUCK], li[LI_WORK]
    now, busy, batch_time, kv_time = lf[LF_NOW], lf[LF_BUSY], lf[LF_BATCH_TIME], lf[LF_KV_TIME]
    status = DONE
    while finished < n:
        if li[LI_STOP] != 0:
            status = STOPPED
            break
        # arrivals join the requests to (re-)key: those served by the previous step
        while admitted < n and arrival[admitted] <= now:
            active[na] = admitted
            work += prompt[admitted] + output[admitted]
            na += 1
            add[nadd] = admitted
            nadd += 1
            admitted += 1
        if everyone:
            no = _rekey_all(code, P, S, keys, active, na, order, tmp)
        elif nadd or dropped:
            for j in range(nadd):
                _set_key(code, P, S, keys, add[j])
            no = _reorder(keys, order, no, add, nadd, moving, done, tmp)
        nadd, dropped, everyone = 0, False, False
        if na == 0 and static_n == 0:
            now = arrival[admitted]
            continue
        # select
        stall = 0.0
        if mode != CONTINUOUS and static_n > 0:  # a static / dynamic batch runs as formed
            nm = 0
            for j in range(static_n):
                i = static_batch[j]
                if mode == STATIC or not done[i]:
                    members[nm] = i
                    chunks[nm] = 0
                    nm += 1
        else:
            if ranks and dispatch.prerank(code, P, S, active, na, now):
                no = _rekey_all(code, P, S, keys, active, na, order, tmp)
            ranking = order
            if mode == CONTINUOUS and not preemptive:  # running requests (started, holding KV) first, stable
                w = 0
                for p in range(no):
                    i = order[p]
                    if resident[i] and steps[i] > 0:
                        part[w] = i
                        w += 1
                for p in range(no):
                    i = order[p]
                    if not (resident[i] and steps[i] > 0):
                        part[w] = i
                        w += 1
                ranking = part
            whole = mode != CONTINUOUS  # static / dynamic batches reserve their whole length up front
            nm, stall = _fill(S, E, W, ci, cf, li, ranking, no, max_batch, NO_BUDGET if whole else budget, whole,
                              packed)
            if whole:
                for j in range(nm):
                    static_batch[j] = members[j]
                static_n = nm
        if nm == 0:
            status = ERR_EMPTY
            break
        # a request in the previous step but not this one, unfinished and still resident: deselected
        for j in range(nm):
            in_step[members[j]] = True
        for j in range(prev_n):
            i = prev_members[j]
            if not in_step[i] and not done[i] and resident[i]:
                preemptions[i] += 1
        for j in range(nm):
            in_step[members[j]] = False
        for j in range(nm):
            prev_members[j] = members[j]
        prev_n = nm
        # price the step
        n_dec, ctx, ctx_max, n_pf, c_sum, c_sq, c_before, before_sum = 0, 0, 0, 0, 0, 0, 0, 0
        for j in range(nm):
            i = members[j]
            c = chunks[j]
            if c == 0:
                n_dec += 1
                ctx += prompt[i] + generated[i]
                ctx_max = max(ctx_max, prompt[i] + generated[i])
            else:
                b = prefilled[i]
                n_pf += 1
                c_sum += c
                c_sq += c * c
                c_before += c * b
                before_sum += b
        dt = _step_time_s(packed, n_dec, ctx, n_pf, c_sum, c_sq, c_before, before_sum, ctx_max)
        d = dt + stall
        now = now + d
        busy += d
        batch_time += d * nm
        kv_time += d * li[LI_USED]
        li[LI_MAX_BATCH] = max(li[LI_MAX_BATCH], nm)
        li[LI_STEPS] += 1
        # serve: decode tokens from the step table, prefill chunks (a completed prefill emits one token)
        m = 0
        emitted_any = False  # a token emitted (the livelock guard's notion of progress)
        chunk_tokens = 0
        for j in range(nm):
            i = members[j]
            c = chunks[j]
            if c == 0:
                if done[i]:
                    continue  # static padding
                row = offset[i] + 1 + decode_steps[i]
                if row >= offset[i + 1]:
                    status = ERR_TABLE
                    break
                e = cum[row] - cum[row - 1]
                left = output[i] - generated[i]
                generated[i] += e if e < left else left
                decode_steps[i] += 1
                drafted[i] += ci[CI_K]
                emitted_any = True
            else:
                prefilled[i] += c
                chunk_tokens += c
                if prefilled[i] >= target[i]:
                    if generated[i] < output[i]:
                        emitted_any = True
                    generated[i] = min(generated[i] + 1, output[i])
                    if np.isnan(first_token[i]):
                        first_token[i] = now
            served[m] = i
            m += 1
        if status != DONE:
            break
        for j in range(m):
            i = served[j]
            steps[i] += 1
            attained[i] += d
            last_service[i] = now
            served_share[i] += d / nm
        _sort(keys, served, m, tmp, True)
        everyone = observes_steps and dispatch.observe(code, P, S, served, m, now)
        # finish
        n_done = 0
        for j in range(m):
            i = served[j]
            if generated[i] >= output[i] and not done[i]:
                done[i] = True
                n_done += 1
                work -= prompt[i] + output[i]
                if mode != STATIC:
                    finish[i] = now
                    li[LI_USED] -= footprint[i]
                    footprint[i] = 0
                    resident[i] = False
        if emitted_any or n_done:
            stuck = 0
        else:
            stuck += chunk_tokens
            if stuck > LIVELOCK_FACTOR * work:
                status = ERR_LIVELOCK
                break
        li[LI_MAX_USED] = max(li[LI_MAX_USED], li[LI_USED])
        if check and not _invariants_hold(E, cap, li[LI_USED], n):
            status = ERR_INVARIANT
            break
        if mode == STATIC:
            over = True
            for j in range(static_n):
                if not done[static_batch[j]]:
                    over = False
                    break
            if over:  # the batch's results return together
                for j in range(static_n):
                    i = static_batch[j]
                    finish[i] = now
                    li[LI_USED] -= footprint[i]
                    footprint[i] = 0
                    resident[i] = False
                static_n = 0
        elif mode == DYNAMIC and n_done:
            static_n = 0  # re-form around the survivors
        # the ranking: finished requests leave; served ones are re-keyed at the next step's start (a key
        # changes only through the request's own service, or for everyone when observe says so)
        if n_done:
            w = 0
            for j in range(na):
                if not done[active[j]]:
                    active[w] = active[j]
                    w += 1
            na = w
            dropped = True
        if everyone:
            nadd = 0
        elif rekey:
            for j in range(m):
                i = served[j]
                if not done[i]:
                    add[nadd] = i
                    nadd += 1
        finished += n_done
        li[LI_FINISHED] = finished
    li[LI_ADMITTED], li[LI_FINISHED], li[LI_NA], li[LI_NO] = admitted, finished, na, no
    li[LI_STATIC_N], li[LI_PREV_N], li[LI_NADD] = static_n, prev_n, nadd
    li[LI_DROPPED], li[LI_EVERYONE] = dropped, everyone
    li[LI_STUCK], li[LI_WORK] = stuck, work
    lf[LF_NOW], lf[LF_BUSY], lf[LF_BATCH_TIME], lf[LF_KV_TIME] = now, busy, batch_time, kv_time
    return status


# ------------------------------------------------------------------------------------------------ glue
def livelock_message(policy: str, preemption: str, stuck_tokens: int, present: int) -> str:
    """The one-line error both batched loops raise when the livelock guard fires."""
    return (f"scheduler {policy}: livelock — {stuck_tokens:,} prefill tokens computed without any request "
            f"emitting a token (more than {LIVELOCK_FACTOR}x the prompt + output tokens of the {present} requests "
            f"present): with {preemption} preemption and memory this tight, each partially prefilled request is "
            "evicted before its prefill completes; use preemption = \"swap\", a larger engine.max_batch_tokens "
            "or more KV capacity")


def _i8(a: np.ndarray) -> np.ndarray:
    return np.require(a, np.int64, ["C_CONTIGUOUS", "WRITEABLE"])


def _same_types(arrays: tuple) -> tuple:
    """Contiguous, writeable arrays: numba types read-only arrays apart (another compilation)."""
    return tuple(np.require(a, a.dtype, ["C_CONTIGUOUS", "WRITEABLE"]) if isinstance(a, np.ndarray) else a
                 for a in arrays)


def supported(engine) -> str | None:
    """Why `engine` must run on the Python loop, or None when the compiled loop can run it."""
    if engine.cfg.mode not in MODE_CODE:
        return f"mode {engine.cfg.mode!r}"
    if getattr(engine.acc, "position_dependent", False):
        return "position-dependent acceptance"
    if engine.cfg.preemption not in ("swap", "recompute"):
        return f"preemption {engine.cfg.preemption!r}"
    arrival = engine.s.arrival_s
    if arrival.size > 1 and np.any(np.diff(arrival) < 0):
        return "arrivals not in order"
    return None


def run_compiled(engine, progress: Callable[[int], None] | None, table=None) -> bool:
    """Run `engine` on the compiled loop (the scheduler packed here); False (nothing changed) when it
    cannot, so the caller runs the Python loop. Sets the engine's statistics as the Python loop would.
    `progress(finished)` is called from this thread about 10 times a second while the loop runs, and at
    the end."""
    s, cfg = engine.s, engine.cfg
    if supported(engine) is not None:
        return False
    from lapsbench.schedulers.user import code_and_module

    code, module = code_and_module(engine.policy, __name__)
    try:
        packed = pack_cost(s.cost, s.k)
    except Exception:  # noqa: BLE001  (the Python engine raises the profile's own error when it prices)
        return False
    if table is None:
        from lapsbench.steptable import build_step_table

        table = build_step_table(s.request_id, s.prompt_tokens, s.output_tokens, s.k, s.cost, engine.acc)
    n, b = s.n, cfg.max_batch
    assert table.offset.size == n + 1, "the step table is for another workload"
    S = type(request_view(s))(*_same_types(tuple(request_view(s))))
    P = engine.policy.pack(s)
    P = type(P)(*_same_types(tuple(P)))
    for name in ("first_token_s", "finish_s", "preempted_s", "attained_s", "last_service_s"):
        assert getattr(s, name).dtype == np.float64 and getattr(s, name).flags.c_contiguous
    # engine state (written through)
    E = (s.first_token_s, s.finish_s, s.preemptions, s.preempted_s, engine.prefilled, engine.target,
         engine.resident, engine.swapped, engine.swapped_tokens, engine.footprint, engine.served_share,
         engine.entry_share)
    # work arrays: active, order, keys, static batch, previous members, members, chunks, served, to (re-)key,
    # scratch, non-preemptive ranking, victims, victims' positions, chosen / moving / in-step flags
    W = (np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros((n, 3)), *(np.zeros(b, np.int64) for _ in range(5)),
         *(np.zeros(n, np.int64) for _ in range(5)), *(np.zeros(n, bool) for _ in range(3)))
    # the tokens in the table's own dtype (int16 for outputs below 32,767 tokens, else int32): numba compiles
    # one loop per dtype, and a 64-bit copy would cost ~10 ns per table row on every run
    T = (_i8(table.offset), np.require(table.cum_tokens, requirements=["C_CONTIGUOUS", "WRITEABLE"]))
    ci = np.array([MODE_CODE[cfg.mode], cfg.max_batch, cfg.max_batch_tokens, cfg.block_size,
                   int(cfg.preemption == "recompute"), s.k, int(engine.policy.preemptive),
                   int(engine.check), int(cfg.admission == "guarded")], np.int64)
    cf = np.array([float(cfg.kv_capacity_tokens), float(engine.kv_bytes), float(engine.link_bytes_s),
                   float(cfg.admission_share)], np.float64)
    li = np.zeros(18, np.int64)
    li[LI_USED] = engine.used
    lf = np.zeros(4, np.float64)
    status = run_polled(module.run_loop, (code, P, S, E, W, T, packed, ci, cf, li, lf), li, LI_FINISHED, LI_STOP,
                        progress)
    if status == ERR_EMPTY:
        raise AssertionError("no request fits an empty engine: capacity checks are wrong")
    if status == ERR_TABLE:
        raise AssertionError("a request took more decode steps than its step table holds")
    if status == ERR_INVARIANT:
        raise AssertionError("KV-cache invariant violated")
    if status == ERR_LIVELOCK:
        raise LapsbenchError(livelock_message(engine.policy.name, cfg.preemption, int(li[LI_STUCK]),
                                              int(li[LI_NA])))
    assert status == DONE, status
    engine.used = int(li[LI_USED])
    engine.max_used = max(engine.max_used, int(li[LI_MAX_USED]))
    engine.max_batch_seen = max(engine.max_batch_seen, int(li[LI_MAX_BATCH]))
    engine.busy_s, engine.batch_time, engine.kv_time = float(lf[LF_BUSY]), float(lf[LF_BATCH_TIME]), float(
        lf[LF_KV_TIME])
    engine.prev_members = W[4][:int(li[LI_PREV_N])].copy()
    engine.static_batch = np.empty(0, np.int64)
    engine.compiled_steps = int(li[LI_STEPS])
    engine.evictions += int(li[LI_EVICTIONS])
    engine.displacements += int(li[LI_DISPLACED])
    return True
