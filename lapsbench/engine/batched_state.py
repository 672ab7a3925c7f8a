"""The batched engine's named state: its configuration as compiled constants, its per-request memory state,
its scratch arrays and the loop's scalars (a one-element record array, so that the phases of a step, compiled
apart or inlined into the loop, update them by name)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

STATIC, DYNAMIC, CONTINUOUS = 0, 1, 2
MODE_CODE = {"static": STATIC, "dynamic": DYNAMIC, "continuous": CONTINUOUS}
NO_BUDGET = np.iinfo(np.int64).max
LIVELOCK_FACTOR = 8  # prefill tokens without progress, in units of the present requests' whole work

# step outcomes (the loop's return value)
OK, IDLE, STOPPED, ERR_EMPTY, ERR_TABLE, ERR_INVARIANT, ERR_LIVELOCK = 0, 1, 2, -1, -2, -3, -4


class Config(NamedTuple):
    """BatchConfig and speculation as the loop reads them."""

    mode: int            # STATIC, DYNAMIC or CONTINUOUS
    max_batch: int
    budget: int          # max tokens per step (continuous)
    block: int           # KV block size, tokens
    recompute: bool      # preemption = "recompute" (else swap)
    k: int
    preemptive: bool     # the scheduler may take the server from a running request
    check: bool          # assert the KV invariants after every step
    guarded: bool        # admission = "guarded"
    kv_cap: float        # KV capacity, tokens (inf: unlimited)
    kv_bytes: float      # bytes per KV token
    link: float          # host link, bytes/s
    share: float         # admission_share
    code: int            # the scheduler's dispatch code (schedulers' code_of)


class Memory(NamedTuple):
    """Per request: prefill progress and KV residency."""

    prefilled: np.ndarray       # int64: tokens of the current prefill target done
    target: np.ndarray          # int64: prefill target (prompt; prompt + generated after a recompute)
    resident: np.ndarray        # bool: holds KV in GPU memory
    swapped: np.ndarray         # bool: its KV is parked in host memory
    swapped_tokens: np.ndarray  # int64: KV slots parked in host memory
    footprint: np.ndarray       # int64: KV slots held (resident)
    served_share: np.ndarray    # float64: Σ step time / members over the steps served in
    entry_share: np.ndarray     # float64: served_share when it last entered memory


class Work(NamedTuple):
    """Scratch arrays (allocated once per run: the loop allocates nothing)."""

    active: np.ndarray        # requests present (arrived, not finished), arrival order
    order: np.ndarray         # active, sorted by (keys, index)
    keys: np.ndarray          # float64 (n, 3): each request's cached keys
    static_batch: np.ndarray  # static / dynamic: the batch being run
    prev_members: np.ndarray  # the previous step's members
    members: np.ndarray       # this step's members, in admission order
    chunks: np.ndarray        # their prefill chunk (0 = decode)
    emitted: np.ndarray       # tokens each decoding member keeps (drawn before the step runs)
    served: np.ndarray        # the requests served by the step
    add: np.ndarray           # requests to (re-)key and merge into `order`
    tmp: np.ndarray           # sort scratch
    part: np.ndarray          # non-preemptive ranking: running requests first
    victims: np.ndarray       # residents not in the step, lowest ranked first
    vpos: np.ndarray          # their positions in the ranking
    chosen: np.ndarray        # bool: in the step being formed
    moving: np.ndarray        # bool: being re-keyed
    in_step: np.ndarray       # bool: in this step's members


LOOP = np.dtype([
    ("now", np.float64), ("price", np.float64), ("busy", np.float64), ("batch_time", np.float64),
    ("kv_time", np.float64), ("kv_cap", np.float64),
    ("admitted", np.int64), ("finished", np.int64), ("na", np.int64), ("no", np.int64), ("nm", np.int64),
    ("n_served", np.int64), ("used", np.int64), ("max_used", np.int64), ("max_batch_seen", np.int64),
    ("static_n", np.int64), ("prev_n", np.int64), ("nadd", np.int64), ("steps", np.int64), ("stuck", np.int64),
    ("work", np.int64), ("evictions", np.int64), ("displaced", np.int64), ("chunk_tokens", np.int64),
    ("k_sum", np.int64), ("k_rows", np.int64), ("dec_steps", np.int64), ("off_steps", np.int64),
    ("dropped", np.bool_), ("everyone", np.bool_), ("emitted_any", np.bool_),
])
"""The loop's scalars: the clock and this step's price (dt + stall), busy-time sums (statistics), the KV
capacity in tokens that admission fills (Config.kv_cap; under off-under-load with free_draft_memory it grows
while SD is off: lapsbench/engine/adaptive.py), counts of
requests admitted / finished / present (`na`) / ranked (`no`) / in the step (`nm`) / served by it, KV slots
used, the static batch's and previous step's sizes, requests to re-key, engine steps, the livelock guard's
prefill tokens without progress (`stuck`) against the present requests' whole work, evictions and
displacements, the step's prefill tokens; adaptive K: Σ K and count of live decoding request-steps, steps
that decode and those of them with every K = 0; whether a request left the ranking (`dropped`), every key must be
recomputed (`everyone`), the step emitted a token."""


def new_work(n: int, max_batch: int) -> Work:
    b = max(max_batch, 1)
    i8 = [np.zeros(n, np.int64) for _ in range(2)]
    return Work(*i8, np.zeros((n, 3)), *(np.zeros(b, np.int64) for _ in range(5)), np.zeros(n, np.int64),
                *(np.zeros(n, np.int64) for _ in range(5)), *(np.zeros(n, bool) for _ in range(3)))


def new_memory(prompt_tokens: np.ndarray) -> Memory:
    n = prompt_tokens.size
    return Memory(np.zeros(n, np.int64), np.array(prompt_tokens, np.int64), np.zeros(n, bool), np.zeros(n, bool),
                  np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n), np.zeros(n))
