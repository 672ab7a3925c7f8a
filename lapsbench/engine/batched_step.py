"""The phases of a batched step that do not call the scheduler: `price` the members, `draw` each decoding
member's tokens, `account` the step (serve members, statistics), `finish` requests and keep the static / dynamic
batch and the present requests current. Each works on the named state of lapsbench/engine/batched_state.py.

Acceptance comes from the step table (lapsbench.engine.steptable): a request's decode step j emits
min(tok(offset[i] + 1 + j), output[i] − generated[i]), tok(row) the table's tokens of that row (row 0 is the
prefill) — also after a recompute, whose extra token only shortens the request."""

from __future__ import annotations

import numpy as np
from numba import njit

from lapsbench.engine.admission import invariants_hold
from lapsbench.engine.batched_state import DYNAMIC, ERR_INVARIANT, ERR_LIVELOCK, ERR_TABLE, LIVELOCK_FACTOR, OK, STATIC
from lapsbench.models.pricing import chunk_bucket_ms, step_time_s


@njit(cache=True, inline="always")
def prefill_sums(M, W, nm, pack):
    """The step's prefill chunks: (count, Σ chunk, Σ chunk², Σ chunk · cached before it, Σ cached before,
    Σ chunk_bucket_ms), as step_time_s takes them. np.int64(0), not 0: numba types a call before a loop's +=
    widens a literal 0, and would compile the pricing once more for literal-zero arguments (~20 s)."""
    n_pf = c_sum = c_sq = c_before = before_sum = np.int64(0)
    bucket = 0.0
    for j in range(nm):
        c = W.chunks[j]
        if c > 0:
            b = M.prefilled[W.members[j]]
            n_pf += 1
            c_sum += c
            c_sq += c * c
            c_before += c * b
            before_sum += b
            bucket += chunk_bucket_ms(pack, c)
    return n_pf, c_sum, c_sq, c_before, before_sum, bucket


@njit(cache=True, _nrt=False)
def price(R, M, W, pack, nm):
    """The step's time without stalls: its decoding members (padding included) and prefill chunks."""
    n_dec = ctx = ctx_max = np.int64(0)  # not literal zeros (prefill_sums)
    for j in range(nm):
        if W.chunks[j] == 0:
            i = W.members[j]
            n_dec += 1
            ctx += R.prompt_tokens[i] + R.generated[i]
            ctx_max = max(ctx_max, R.prompt_tokens[i] + R.generated[i])
    n_pf, c_sum, c_sq, c_before, before_sum, bucket = prefill_sums(M, W, nm, pack)
    return step_time_s(pack, n_dec, ctx, ctx_max, n_pf, c_sum, c_sq, c_before, before_sum, bucket)


@njit(cache=True, _nrt=False)
def draw(R, W, offset, cum, nm):
    """Tokens each live decoding member keeps this step, into W.emitted (static padding: -1)."""
    for j in range(nm):
        i = W.members[j]
        W.emitted[j] = -1
        if W.chunks[j] == 0 and not R.done[i]:
            row = offset[i] + 1 + R.decode_steps[i]
            if row >= offset[i + 1]:
                return ERR_TABLE
            e = cum[row] - cum[row - 1]
            left = R.output_tokens[i] - R.generated[i]
            W.emitted[j] = e if e < left else left
    return OK


@njit(cache=True, _nrt=False)
def account(R, out, M, W, C, L, A, now, took):
    """Serve the step's members (ended at `now`, having taken `took`): tokens, prefill progress, statistics.
    The served requests go to W.served[:L.n_served], in member order."""
    nm = L.nm
    L.busy += took
    L.batch_time += took * nm
    L.kv_time += took * L.used
    L.max_batch_seen = max(L.max_batch_seen, nm)
    L.steps += 1
    m = 0
    L.emitted_any = False  # a token emitted (the livelock guard's notion of progress)
    L.chunk_tokens = 0
    for j in range(nm):
        i = W.members[j]
        c = W.chunks[j]
        if c == 0:
            if W.emitted[j] < 0:
                continue  # static padding
            R.generated[i] += W.emitted[j]
            R.decode_steps[i] += 1
            R.drafted[i] += A.ks[j] if A.on else C.k
            L.emitted_any = True
        else:
            M.prefilled[i] += c
            L.chunk_tokens += c
            if M.prefilled[i] >= M.target[i]:
                if R.generated[i] < R.output_tokens[i]:
                    L.emitted_any = True
                R.generated[i] = min(R.generated[i] + 1, R.output_tokens[i])
                if np.isnan(out.first_token_s[i]):
                    out.first_token_s[i] = now
        W.served[m] = i
        m += 1
    for j in range(m):
        i = W.served[j]
        R.steps[i] += 1
        R.attained_s[i] += took
        R.last_service_s[i] = now
        M.served_share[i] += took / nm
    L.n_served = m


@njit(cache=True, inline="always")
def _release(M, L, i):
    L.used -= M.footprint[i]
    M.footprint[i] = 0
    M.resident[i] = False


@njit(cache=True, _nrt=False)
def finish(R, out, M, W, C, L, now, rekey):
    """Served requests that completed leave (a static batch's results return together when its last member
    completes); the livelock guard; the present requests and those to re-key at the next step. Returns a
    status."""
    n_done = 0
    for j in range(L.n_served):
        i = W.served[j]
        if R.generated[i] >= R.output_tokens[i] and not R.done[i]:
            R.done[i] = True
            n_done += 1
            L.work -= R.prompt_tokens[i] + R.output_tokens[i]
            if C.mode != STATIC:
                out.finish_s[i] = now
                _release(M, L, i)
    # Livelock guard: prefill tokens computed since a step last emitted a token, against the whole work (prompt
    # + output tokens) of the requests present. Without evictions a prefill-only streak is at most that work;
    # only recompute preemption can throw prefill away, over and over.
    if L.emitted_any or n_done:
        L.stuck = 0
    else:
        L.stuck += L.chunk_tokens
        if L.stuck > LIVELOCK_FACTOR * L.work:
            return ERR_LIVELOCK
    L.max_used = max(L.max_used, L.used)
    if C.check and not invariants_hold(M, L.kv_cap, L.used):
        return ERR_INVARIANT
    if C.mode == STATIC:
        over = True
        for j in range(L.static_n):
            over = over and R.done[W.static_batch[j]]
        if over:  # the batch's results return together
            for j in range(L.static_n):
                out.finish_s[W.static_batch[j]] = now
                _release(M, L, W.static_batch[j])
            L.static_n = 0
    elif C.mode == DYNAMIC and n_done:
        L.static_n = 0  # re-form around the survivors
    if n_done:  # finished requests leave the ranking
        w = 0
        for j in range(L.na):
            if not R.done[W.active[j]]:
                W.active[w] = W.active[j]
                w += 1
        L.na = w
        L.dropped = True
    if L.everyone:
        L.nadd = 0
    elif rekey:  # served ones are re-keyed at the next step's start (a key changes only through its own service)
        for j in range(L.n_served):
            i = W.served[j]
            if not R.done[i]:
                W.add[L.nadd] = i
                L.nadd += 1
    L.finished += n_done
    return OK
