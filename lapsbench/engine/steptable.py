"""Every step each request will take at batch size 1, computed once per replication.

At batch size 1 a step's cost depends only on the request's own context, and its acceptance draw only on
(seed, replication, request id, step). So a request's whole sequence of steps — tokens emitted and time
taken — is the same under every scheduler; only *when* the steps run differs. The table stores, per
request, cumulative tokens and cumulative service time after each of its steps, so the engine can
advance a request any number of steps with a lookup, and all schedulers of a replication share one table.

Time is integer nanoseconds (each step's cost rounded once), so sums are exact in any order: the fast
engine and the step-by-step reference agree bit for bit however they group steps.

Under `[speculation] adaptive` kind goodput a request's draft length K varies per step, but at batch size 1 it
depends only on the request's own acceptance history and context, so the table still holds each request's
steps, with the K of each (`k_steps`; built by lapsbench.engine.batch1_goodput).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from lapsbench.models.cost import CostModel, sd_step_s
from lapsbench.units import NS

CHUNK_STEPS = 1 << 22  # flat steps per construction chunk (bounds temporary memory)


def to_ns(seconds: np.ndarray | float) -> np.ndarray:
    return np.rint(np.asarray(seconds, np.float64) * NS).astype(np.int64)


@dataclass(frozen=True)
class StepTable:
    offset: np.ndarray      # int64 (n + 1): request i's steps are rows offset[i] .. offset[i+1]-1
    cum_tokens: np.ndarray  # tokens generated after each step (int16 / int32)
    price: Callable[[np.ndarray, np.ndarray], np.ndarray] = field(repr=False, compare=False)
    #                         (offset, cum_tokens) -> cum_ns; run once, on first use of `cum_ns`
    k_steps: np.ndarray | None = None  # int64 per row: the K the step drafts (goodput); None: the run's k

    @cached_property
    def cum_ns(self) -> np.ndarray:
        """Service time after each step, ns from the request's first step (int64). Priced on first use:
        the batched engine reads only the tokens (it prices whole batches), so it never pays for this."""
        return self.price(self.offset, self.cum_tokens)

    @property
    def n_steps(self) -> np.ndarray:
        return np.diff(self.offset)

    def service_ns(self) -> np.ndarray:
        """Total service time of each request."""
        return self.cum_ns[self.offset[1:] - 1]

    def step(self, i: int, j: int) -> tuple[int, int]:
        """Tokens emitted and ns taken by request i's step j (for the reference engine)."""
        row = int(self.offset[i]) + j
        first = j == 0
        tokens = int(self.cum_tokens[row]) - (0 if first else int(self.cum_tokens[row - 1]))
        ns = int(self.cum_ns[row]) - (0 if first else int(self.cum_ns[row - 1]))
        return tokens, ns

    def drafts(self, i: int, j: int, k: int) -> int:
        """The draft length of request i's step j (0 for its prefill; `k` unless the table has per-step K's)."""
        if j == 0:
            return 0
        return k if self.k_steps is None else int(self.k_steps[int(self.offset[i]) + j])

    def k_stats(self) -> tuple[float, float]:
        """(mean K, share of decode steps with K = 0) over every request's decode steps (per-step K's only): at
        batch size 1 every step the table holds runs, whatever the scheduler."""
        assert self.k_steps is not None
        decode = np.ones(self.k_steps.size, bool)
        decode[self.offset[:-1][self.n_steps > 0]] = False
        ks = self.k_steps[decode]
        return (float(ks.mean()) if ks.size else 0.0), (float((ks == 0).mean()) if ks.size else 0.0)


def _segment_cumsum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each segment start (starts are flat indices, ascending, first 0)."""
    total = np.cumsum(values)
    base = np.zeros_like(total)
    base[starts[1:]] = total[starts[1:] - 1]
    return total - np.maximum.accumulate(base)


def build_step_table(request_id: np.ndarray, prompt: np.ndarray, output: np.ndarray, k: int, cost: CostModel,
                     acceptance) -> StepTable:
    """Draw every step of every request: step 0 is the prefill (1 token), then SD steps emitting
    min(drawn, remaining) tokens each until the output length is reached.

    Tokens are drawn now, chunk by chunk (memory near the table's own size); step costs are priced on
    first use of `cum_ns`, over the same chunks into one preallocated array."""
    if getattr(acceptance, "position_dependent", False):
        raise ValueError("the step table pre-draws acceptance by (request, step): a position-dependent process "
                         "cannot be drawn ahead")
    expected = _expected_tokens(acceptance, len(output)) if k > 0 else np.ones(len(output))
    bounds = _chunks(output, expected)
    if k == 0:  # plain decoding: every step emits one token, whatever the acceptance process
        offset, cum_tokens = _one_token_steps(output)
    else:
        offset, cum_tokens = _draw(output, k, acceptance, bounds, expected)

    def price(offset: np.ndarray, cum_tokens: np.ndarray) -> np.ndarray:
        return _price(offset, cum_tokens, bounds, prompt, output, k, cost)

    return StepTable(offset, cum_tokens, price)


def repriced(table: StepTable, prompt: np.ndarray, output: np.ndarray, k: int, cost: CostModel,
             acceptance) -> StepTable:
    """`table`'s steps (the same tokens) priced by another cost model: the steps as a scheduler that estimates
    with `cost` believes them to cost (`[model] scheduler_profile`). Fixed-k tables only."""
    assert table.k_steps is None
    expected = _expected_tokens(acceptance, len(output)) if k > 0 else np.ones(len(output))
    bounds = _chunks(output, expected)
    return StepTable(table.offset, table.cum_tokens,
                     lambda offset, cum_tokens: _price(offset, cum_tokens, bounds, prompt, output, k, cost))


def _expected_tokens(acceptance, n: int) -> np.ndarray:
    """Expected tokens per step: sizes the pre-drawing and the chunks only; exactness does not depend on it."""
    if hasattr(acceptance, "mean_tokens"):
        return np.maximum(np.asarray(acceptance.mean_tokens(np.arange(n)), np.float64), 1.0)
    return np.ones(n)


def _chunks(output: np.ndarray, expected: np.ndarray) -> list[int]:
    """Request boundaries of construction chunks of about CHUNK_STEPS steps each."""
    n = len(output)
    est_all = np.ceil((output - 1) / expected).astype(np.int64) + 2
    bounds = [0]
    while bounds[-1] < n:
        start = bounds[-1]
        bounds.append(min(n, start + max(1, int(np.searchsorted(np.cumsum(est_all[start:]), CHUNK_STEPS)))))
    return bounds


def _token_dtype(output: np.ndarray) -> type:
    return np.int16 if output.max(initial=0) < np.iinfo(np.int16).max else np.int32


def _one_token_steps(output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """k = 0: the prefill then one token per step, so request i has max(output, 1) steps and holds
    min(j + 1, output) tokens after its step j — what drawing from any acceptance process gives."""
    counts = np.maximum(np.asarray(output, np.int64), 1)
    offset = np.zeros(len(output) + 1, np.int64)
    np.cumsum(counts, out=offset[1:])
    dtype = _token_dtype(output)
    # 1, 2, ..., count per request: a running count of ones, restarted at each request's first row
    ones = np.ones(int(offset[-1]), dtype)
    ones[offset[1:-1]] -= counts[:-1].astype(dtype)
    cum_tokens = np.cumsum(ones, dtype=dtype)
    short = np.flatnonzero(np.asarray(output) < 1)  # output 0: the prefill's token is not kept
    cum_tokens[offset[short]] = 0
    return offset, cum_tokens


def _draw(output: np.ndarray, k: int, acceptance, bounds: list[int],
          expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw every request's tokens per step, chunk by chunk (stored at once in their final dtype)."""
    n = len(output)
    tok_dtype = _token_dtype(output)
    counts = np.zeros(n, np.int64)
    token_parts = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        idx = np.arange(start, stop)
        emitted, cnt = _draw_independent(idx, output[idx], k, acceptance, expected[start:stop])
        starts = np.zeros(idx.size, np.int64)
        np.cumsum(cnt[:-1], out=starts[1:])
        token_parts.append(_segment_cumsum(emitted, starts).astype(tok_dtype))
        counts[start:stop] = cnt
    offset = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offset[1:])
    return offset, np.concatenate(token_parts)


def _price(offset: np.ndarray, cum_tokens: np.ndarray, bounds: list[int], prompt: np.ndarray,
           output: np.ndarray, k: int, cost: CostModel) -> np.ndarray:
    """Each step's batch-1 cost, cumulated per request, chunk by chunk into one preallocated array."""
    step_ns = _StepCostTable(cost, k, prompt, output)
    counts = np.diff(offset)
    cum_ns = np.empty(int(offset[-1]), np.int64)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        rows = slice(int(offset[start]), int(offset[stop]))
        starts = offset[start:stop] - offset[start]
        tokens = cum_tokens[rows].astype(np.int64)
        before = np.concatenate(([0], tokens[:-1]))
        before[starts] = 0
        owner = np.repeat(np.arange(start, stop), counts[start:stop])
        ns = step_ns.decode_ns(prompt[owner] + before)
        ns[starts] = step_ns.prefill_ns(prompt[start:stop])
        cum_ns[rows] = _segment_cumsum(ns, starts)
    return cum_ns


class _StepCostTable:
    """Batch-1 step cost in ns by context length: a decode step's cost depends only on the context, so
    it is computed once per distinct context and gathered, instead of evaluated per step."""

    def __init__(self, cost: CostModel, k: int, prompt: np.ndarray, output: np.ndarray) -> None:
        self.lo = int(prompt.min(initial=0))
        hi = int((prompt + output).max(initial=0)) + 1
        context = np.arange(self.lo, hi, dtype=np.int64)
        self.decode = to_ns(sd_step_s(cost, k, np.ones(context.size, np.int64), context))
        self.cost, self.k = cost, k

    def decode_ns(self, context: np.ndarray) -> np.ndarray:
        return self.decode[context - self.lo]

    def prefill_ns(self, prompt: np.ndarray) -> np.ndarray:
        return prefill_ns(self.cost, self.k, prompt)


def prefill_ns(cost: CostModel, k: int, prompt: np.ndarray) -> np.ndarray:
    """The batch-1 prefill of each prompt (a request's step 0), ns."""
    z = np.zeros(prompt.size, np.int64)
    return to_ns(sd_step_s(cost, k, z, z, np.ones(prompt.size, np.int64), prompt, prompt * prompt, z, z))


def _draw_independent(idx, out, k, acceptance, expected):
    """Draw a generous estimate of steps per request; draw again for the few that need more."""
    n = idx.size
    need = np.ceil((out - 1) / expected * 1.2).astype(np.int64) + 4
    drawn = np.zeros(n, np.int64)       # steps kept so far per request
    generated = np.zeros(n, np.int64)   # tokens after those steps
    pieces: list[tuple[np.ndarray, np.ndarray]] = []  # (requests of the round, tokens of their kept steps)
    kept_per_round: list[np.ndarray] = []
    pending = np.arange(n)
    while pending.size:
        cnt = need[pending]
        first = np.zeros(pending.size, np.int64)
        np.cumsum(cnt[:-1], out=first[1:])
        offset_in_request = np.repeat(drawn[pending] - first, cnt)  # step number = flat index + this
        step_no = np.arange(first[-1] + cnt[-1]) + offset_in_request
        tokens = acceptance.emitted(np.repeat(idx[pending], cnt), np.maximum(step_no - 1, 0), step_no)
        if not pieces:
            tokens[first] = 1  # step 0 of every request is its prefill: one token
        cum = _segment_cumsum(tokens, first)
        if pieces:  # later rounds continue from the tokens already generated
            cum += np.repeat(generated[pending], cnt)
        limit = np.repeat(out[pending], cnt)
        reached = cum >= limit
        keep = np.ones(reached.size, bool)  # every step up to and including the one that reaches the end
        keep[1:] = ~reached[:-1]
        keep[first] = True
        np.minimum(cum, limit, out=cum)
        previous = np.empty_like(cum)
        previous[1:] = cum[:-1]
        previous[first] = generated[pending]
        kept = np.add.reduceat(keep.astype(np.int64), first)
        pieces.append((pending, (cum - previous)[keep]))
        kept_per_round.append(kept)
        drawn[pending] += kept
        finished = np.add.reduceat(reached.astype(np.int64), first) > 0
        generated[pending] = cum[first + cnt - 1]
        pending = pending[~finished]
        need[pending] = np.maximum(need[pending] // 2, 8)
    if len(pieces) == 1:  # the common case: one draw was enough for everyone, already in order
        return pieces[0][1], drawn
    owner = np.concatenate([np.repeat(who, kept) for (who, _), kept in zip(pieces, kept_per_round, strict=True)])
    tokens = np.concatenate([p[1] for p in pieces])
    # Each round is sorted by request and later rounds continue earlier ones: a stable sort by request
    # (timsort merges the sorted runs) puts every request's steps in order.
    return tokens[np.argsort(owner, kind="stable")], drawn
