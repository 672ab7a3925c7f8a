"""Forming a batched step: the admission walk over the ranking, KV memory, eviction and guarded displacement.

`fill` walks the ranking, admitting requests while the batch, token budget and KV memory allow. A request that
does not fit stops admission (no overtaking), after evicting lower-ranked residents that are not in the step
if that makes room — except, under guarded admission (continuous mode), a *waiting* request (one holding no
KV): it may evict only residents whose displacement pays (`_pays`); when those cannot make room it waits for
free memory, the waiting requests ranked below it wait behind it, and the walk goes on over the residents
ranked below it, which run on the memory they hold (docs/batching.md §3). Preemption: `swap` copies the
victim's KV to host memory (bytes / host-link bandwidth, and the same again to bring it back; the engine
stalls for the copy), `recompute` drops it and the request later re-prefills its prompt and everything it had
generated. Nothing here calls the scheduler."""

from __future__ import annotations

import numpy as np
from numba import njit

from lapsbench.models.pricing import chunk_bucket_ms, step_time_s


@njit(cache=True)
def roundup(tokens, block):
    return -(-tokens // block) * block


@njit(cache=True, inline="always")
def evict(R, out, M, C, L, v):
    """Preempt resident v under memory pressure; returns the engine stall it costs (swap-out)."""
    fp = M.footprint[v]
    L.used -= fp
    M.resident[v] = False
    out.preemptions[v] += 1
    L.evictions += 1
    stall = 0.0
    if not C.recompute:
        stall = float(fp) * C.kv_bytes / C.link
        M.swapped[v] = True
        M.swapped_tokens[v] = fp
    else:  # everything cached is lost; prefill prompt + generated again
        M.target[v] = R.prompt_tokens[v] + R.generated[v]
        M.prefilled[v] = 0
    out.preempted_s[v] += stall
    M.footprint[v] = 0
    return stall


@njit(cache=True)
def _displacement_cost(R, M, C, pack, v):
    """Engine seconds that evicting resident v costs: swap — its KV copied out and back in; recompute — the
    prefill of what it had cached."""
    if not C.recompute:
        out = float(M.footprint[v]) * C.kv_bytes / C.link
        return out + out
    lost = R.prompt_tokens[v] + R.generated[v] if M.prefilled[v] >= M.target[v] else M.prefilled[v]
    none, one = np.int64(0), np.int64(1)  # not literals: a literal argument compiles another step_time_s
    return step_time_s(pack, none, none, none, one, lost, lost * lost, none, none, chunk_bucket_ms(pack, lost))


@njit(cache=True, inline="always")
def _pays(R, M, C, pack, i, v):
    """Displacing v for waiting request i costs at most admission_share of the engine time v has been served
    beyond i since v entered memory."""
    gain = M.served_share[v] - max(M.served_share[i], M.entry_share[v])
    return _displacement_cost(R, M, C, pack, v) <= C.share * gain


@njit(cache=True, inline="always")
def _need(R, M, C, i, tokens, budget, whole):
    """(chunk, step tokens, KV slots) of request i joining a step of `tokens` tokens so far (chunk 0: it
    decodes); chunk -1 when it does not fit the token budget. Static / dynamic batches (`whole`) reserve their
    whole length up front."""
    k, block = C.k, C.block
    left = M.target[i] - M.prefilled[i]
    if left <= 0:
        if tokens + k + 1 > budget:
            return -1, 0, 0
        if whole:
            return 0, k + 1, roundup(R.prompt_tokens[i] + R.output_tokens[i] + k + 1, block)
        return 0, k + 1, roundup(R.prompt_tokens[i] + R.generated[i] + k + 1, block)
    chunk = left if whole else min(left, budget - tokens)
    if chunk <= 0:
        return -1, 0, 0
    if whole:
        return chunk, chunk, roundup(R.prompt_tokens[i] + R.output_tokens[i] + k + 1, block)
    return chunk, chunk, roundup(M.prefilled[i] + chunk + k + 1, block)


@njit(cache=True, inline="always")
def _victims(M, W, order, no):
    """Residents not in the step, lowest ranked first, over the whole ranking, into W.victims; their count."""
    vn = 0
    for p in range(no - 1, -1, -1):
        v = order[p]
        if M.resident[v] and not W.chosen[v]:
            W.victims[vn] = v
            W.vpos[vn] = p
            vn += 1
    return vn


@njit(cache=True, inline="always")
def _gone(M, W, v):
    """Victim v was admitted to the step or evicted since the victims were listed."""
    return W.chosen[v] or not M.resident[v]


@njit(cache=True, inline="always")
def _displace(R, out, M, W, C, L, pack, i, pos, short, vh, vn, stall):
    """Guarded admission of waiting request i at ranking position `pos`, `short` slots short: evict the
    victims below it whose displacement pays, lowest ranked first, until they free `short` slots. Returns
    (slots freed, the step's stall so far plus theirs), or (-1, stall) when all of them cannot (nothing
    evicted)."""
    got = 0
    last = -1
    for q in range(vh, vn):
        v = W.victims[q]
        if _gone(M, W, v):
            continue
        if W.vpos[q] <= pos:
            break
        if _pays(R, M, C, pack, i, v):
            got += M.footprint[v]
            if got >= short:
                last = q
                break
    if last < 0:
        return -1, stall
    freed = 0
    for q in range(vh, last + 1):
        v = W.victims[q]
        if not _gone(M, W, v) and _pays(R, M, C, pack, i, v):
            freed += M.footprint[v]
            stall += evict(R, out, M, C, L, v)
            L.displaced += 1
    return freed, stall


@njit(cache=True, inline="always")
def _join(R, out, M, W, C, L, i, waiting, need, extra, chunk, nch):
    """Request i joins the step (bringing its KV back from host memory if swapped); returns the stall."""
    stall = 0.0
    if M.swapped[i]:
        back = float(M.swapped_tokens[i]) * C.kv_bytes / C.link
        stall = back
        out.preempted_s[i] += back
        M.swapped[i] = False
    if waiting:  # it enters memory: its tenure starts
        M.entry_share[i] = M.served_share[i]
    L.used += extra
    M.footprint[i] = need
    M.resident[i] = True
    W.members[nch] = i
    W.chunks[nch] = chunk
    W.chosen[i] = True
    return stall


@njit(cache=True, _nrt=False)
def shrink_to_capacity(R, out, M, W, C, L, order, no):
    """Evict the lowest-ranked residents of `order[:no]` until the KV memory used fits the capacity again (it
    shrank: speculation turned back on and took the draft's memory back, lapsbench/engine/adaptive.py); returns
    the stall of the swap-outs. Never entered while used <= capacity."""
    stall = 0.0
    vn = _victims(M, W, order, no)
    for q in range(vn):
        if L.used <= L.kv_cap:
            break
        stall += evict(R, out, M, C, L, W.victims[q])
    return stall


@njit(cache=True, _nrt=False)
def fill(R, out, M, W, C, L, pack, order, no, max_batch, budget, whole):
    """The admission walk over `order[:no]`: members and chunks into W.members, W.chunks; returns (members,
    stall). If the capacity (L.kv_cap) shrank below the memory used, `shrink_to_capacity` evicts first."""
    guarded = C.guarded and not whole
    stall = 0.0
    if L.used > L.kv_cap:
        stall = shrink_to_capacity(R, out, M, W, C, L, order, no)
    free = L.kv_cap - float(L.used)
    ncand = min(no, max_batch + 1)  # until a waiting request is blocked, each one examined joins or ends the walk
    nch, tokens = 0, 0
    built, vh, vn = False, 0, 0
    pos, blocked, bq = -1, False, -1  # once blocked: the walk goes on over the residents below it (victims[bq])
    while nch < max_batch:
        if not blocked:
            pos += 1
            if pos >= ncand:
                break
            i = order[pos]
        else:
            while bq >= 0 and _gone(M, W, W.victims[bq]):
                bq -= 1
            if bq < 0:
                break
            i, pos = W.victims[bq], W.vpos[bq]
            bq -= 1
        waiting = not M.resident[i]
        chunk, step_tokens, need = _need(R, M, C, i, tokens, budget, whole)
        if chunk < 0:
            break
        extra = need if waiting else need - M.footprint[i]
        if extra > free:
            if not built:
                built, vn = True, _victims(M, W, order, no)
            if guarded and waiting:
                freed, stall = _displace(R, out, M, W, C, L, pack, i, pos, extra - free, vh, vn, stall)
                if freed < 0:  # it waits for free memory; so do the waiting requests behind it
                    blocked, bq = True, vn - 1
                    while bq >= 0 and W.vpos[bq] <= pos:
                        bq -= 1
                    continue
                free += freed
            while extra > free:  # evict the lowest-ranked residents below it
                while vh < vn and _gone(M, W, W.victims[vh]):
                    vh += 1
                if vh >= vn or W.vpos[vh] <= pos:
                    break
                v = W.victims[vh]
                vh += 1
                free += M.footprint[v]
                stall += evict(R, out, M, C, L, v)
                if waiting:
                    L.displaced += 1
            if extra > free:
                break
        stall += _join(R, out, M, W, C, L, i, waiting, need, extra, chunk, nch)
        free -= extra
        nch += 1
        tokens += step_tokens
    for j in range(nch):
        W.chosen[W.members[j]] = False
    return nch, stall


@njit(cache=True)
def invariants_hold(M, cap, used):
    total = 0
    for i in range(M.resident.size):
        if M.resident[i]:
            total += M.footprint[i]
            if M.swapped[i]:
                return False
    return used <= cap and used == total
