"""Acceptance processes: how many tokens one speculative-decoding step emits for a request.

A step drafts `k` tokens; the target accepts a prefix of them and adds one token of its own, so a step
emits between 1 and k + 1 tokens (never past the request's output length — the engine caps that).
Every process answers `emitted(req, step, position)` vectorised: `req` indexes the workload, `step` is
the request's own decode-step counter (0 = first speculative step after prefill) and `position` the
number of tokens generated before the step. Draws depend only on (replication key, request id, step),
so every scheduler sees the same accepted-token sequence for a request (common random numbers).

Across draft lengths too: `accepted(req, step, position)` is the draft count accepted at the process's
maximum k — a function of (seed, replication, request, step) for `fixed` and `beta`, of (seed, replication,
request, position) for `empirical` (its `indexed_by`), never of K — and a step drafting K' <= k emits
min(accepted, K') + 1 (`emitted_at`), bit-identical to a process built with k = K'. `accepted_table` lays
the draws out per request for the compiled engines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lapsbench.models import rng


@dataclass
class FixedAcceptance:
    """Each of the k drafts is accepted with probability α (per request) until the first rejection.

    Accepted drafts G satisfy P(G >= m) = α^m, drawn as G = floor(ln U / ln α) from one uniform U, capped
    at k. Mean tokens per step: (1 − α^(k+1)) / (1 − α)."""

    alpha: np.ndarray  # per request, in [0, 1)
    request_id: np.ndarray
    k: int
    key: np.uint64

    def __post_init__(self) -> None:
        alpha = np.asarray(self.alpha, np.float64)
        with np.errstate(divide="ignore"):
            log_alpha = np.log(alpha)
        # one α for everyone (the common case) → a scalar, saving a gather per draw
        self._log_alpha = log_alpha[0] if alpha.size and np.all(alpha == alpha[0]) else log_alpha

    def mean_tokens(self, req: np.ndarray) -> np.ndarray:
        """Expected tokens per step of each request (used only to size pre-drawing)."""
        return mean_tokens_per_step(self.alpha[req], self.k)

    indexed_by = "step"

    def accepted(self, req: np.ndarray, step: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Drafts accepted at this process's k (the maximum): G = floor(ln U / ln α) capped at k."""
        if self.k == 0:
            return np.zeros(np.shape(req), dtype=np.int64)
        u = rng.uniform(self.key, self.request_id[req], step)
        log_alpha = self._log_alpha if np.ndim(self._log_alpha) == 0 else self._log_alpha[req]
        with np.errstate(divide="ignore", invalid="ignore"):
            accepted = np.floor(np.log(u) / log_alpha)  # α = 0: log α = −inf → −0 → 0 accepted
        np.minimum(accepted, self.k, out=accepted)
        return accepted.astype(np.int64)

    def emitted(self, req: np.ndarray, step: np.ndarray, position: np.ndarray) -> np.ndarray:
        return self.accepted(req, step, position) + 1


def mean_tokens_per_step(alpha, k: int):
    """Closed form for the geometric acceptance model: E[tokens] = (1 − α^(k+1)) / (1 − α)."""
    return (1.0 - np.asarray(alpha, np.float64) ** (k + 1)) / (1.0 - np.asarray(alpha, np.float64))


# ------------------------------------------------------------------------------------------------ beta

def normals(key: np.uint64, request_id: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Standard normal draws, a pure function of (key, request id, counter) (Box–Muller on two uniforms)."""
    counter = np.asarray(counter, np.int64)
    u1 = rng.uniform(key, request_id, 2 * counter)
    u2 = rng.uniform(key, request_id, 2 * counter + 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def segmented_ar1(innovations: np.ndarray, seg_start: np.ndarray, phi: float) -> np.ndarray:
    """x[i] = phi·x[i−1] + innovations[i] inside each segment (x = innovation at a segment's start).

    A log-depth prefix scan: after the pass with shift d, x[i] sums phi^j·e[i−j] for j < 2d within the
    segment, so ceil(log2(longest segment)) vectorised passes compute every AR(1) path at once."""
    x = innovations.astype(np.float64).copy()
    idx = np.arange(x.size)
    longest = int((idx - seg_start).max()) + 1 if x.size else 0
    d = 1
    while d < longest:
        src = idx - d
        ok = src >= seg_start
        shifted = np.zeros_like(x)
        shifted[ok] = x[src[ok]]
        x = x + phi**d * shifted
        d *= 2
    return x


@dataclass
class BetaAcceptance:
    """Per-request α ~ Beta(mean·c, (1 − mean)·c), optionally drifting within the request.

    At decode step s (0 = first speculative step) the request's acceptance probability is

        α_s = clip(α_r + (α_0 − α_r)·exp(−s / warmup_steps) + x_s, 0, max_alpha)

    with α_0 = `initial` (warm-up term only when warmup_steps > 0) and x_s a stationary AR(1) path in the
    request (x_s = φ·x_{s−1} + √(1−φ²)·σ·z_s, x_0 = σ·z_0; only when σ > 0). Given α_s, the accepted
    drafts are geometric as in `FixedAcceptance`. The AR(1) paths are precomputed once per replication
    (one value per possible decode step, i.e. output_tokens − 1 per request) from counter-based normals,
    so `emitted` stays a pure lookup."""

    alpha: np.ndarray  # per-request α_r (workload order)
    request_id: np.ndarray
    k: int
    key: np.uint64
    initial: float = 0.5
    warmup_steps: float = 0.0
    max_alpha: float = 0.99
    ar: np.ndarray | None = None       # flat AR(1) values
    ar_offset: np.ndarray | None = None
    ar_len: np.ndarray | None = None

    @classmethod
    def build(cls, alpha: np.ndarray, request_id: np.ndarray, output_tokens: np.ndarray, k: int, key: np.uint64,
              noise_key: np.uint64, initial: float = 0.5, warmup_steps: float = 0.0, ar_phi: float = 0.0,
              ar_sigma: float = 0.0, max_alpha: float = 0.99) -> BetaAcceptance:
        acc = cls(np.asarray(alpha, np.float64), request_id, k, key, initial, warmup_steps, max_alpha)
        if ar_sigma > 0:
            length = np.maximum(np.asarray(output_tokens, np.int64) - 1, 1)
            offset = np.concatenate(([0], np.cumsum(length)[:-1]))
            req = np.repeat(np.arange(length.size), length)
            step = np.arange(int(length.sum())) - offset[req]
            z = normals(noise_key, request_id[req], step)
            e = np.where(step == 0, ar_sigma * z, np.sqrt(1.0 - ar_phi * ar_phi) * ar_sigma * z)
            acc.ar = segmented_ar1(e, offset[req], ar_phi)
            acc.ar_offset, acc.ar_len = offset, length
        return acc

    def mean_tokens(self, req: np.ndarray) -> np.ndarray:
        """Expected tokens per step at the request's own α (sizes the step table's pre-drawing only)."""
        return mean_tokens_per_step(np.minimum(self.alpha[req], self.max_alpha), self.k)

    def alpha_at(self, req: np.ndarray, step: np.ndarray) -> np.ndarray:
        a = self.alpha[req]
        if self.warmup_steps > 0:
            a = a + (self.initial - a) * np.exp(-np.asarray(step, np.float64) / self.warmup_steps)
        if self.ar is not None:
            assert self.ar_offset is not None and self.ar_len is not None
            a = a + self.ar[self.ar_offset[req] + np.minimum(step, self.ar_len[req] - 1)]
        return np.clip(a, 0.0, self.max_alpha)

    indexed_by = "step"

    def accepted(self, req: np.ndarray, step: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Drafts accepted at this process's k (the maximum), geometric at the step's α_s."""
        if self.k == 0:
            return np.zeros(np.shape(req), dtype=np.int64)
        req = np.asarray(req)
        step = np.broadcast_to(np.asarray(step, np.int64), req.shape)
        u = rng.uniform(self.key, self.request_id[req], step)
        alpha = self.alpha_at(req, step)
        with np.errstate(divide="ignore", invalid="ignore"):
            accepted = np.floor(np.log(u) / np.log(alpha))
        accepted = np.where(alpha > 0, np.minimum(accepted, self.k), 0)
        return accepted.astype(np.int64)

    def emitted(self, req: np.ndarray, step: np.ndarray, position: np.ndarray) -> np.ndarray:
        return self.accepted(req, step, position) + 1


def beta_moments(mean: float, concentration: float, upto: int) -> np.ndarray:
    """E[α^j] for j = 0..upto, α ~ Beta(mean·c, (1 − mean)·c)."""
    a, b = mean * concentration, (1.0 - mean) * concentration
    out = np.ones(upto + 1)
    for j in range(1, upto + 1):
        out[j] = out[j - 1] * (a + j - 1) / (a + b + j - 1)
    return out


def beta_mean_tokens_per_step(mean: float, concentration: float, k: int, step: int = 0, initial: float = 0.5,
                              warmup_steps: float = 0.0, ar_sigma: float = 0.0) -> float:
    """Closed form of E[tokens per step] at decode step `step` for `BetaAcceptance` (ignoring the clip):
    E[Σ_{j=0..k} α_s^j] with α_s = w·α_0 + (1 − w)·α + x, w = exp(−s/warmup), x ~ N(0, σ²) independent."""
    from math import comb

    m = beta_moments(mean, concentration, k)
    w = float(np.exp(-step / warmup_steps)) if warmup_steps > 0 else 0.0
    # moments of y = w·α0 + (1 − w)·α
    my = np.array([sum(comb(j, i) * (w * initial) ** (j - i) * (1 - w) ** i * m[i] for i in range(j + 1))
                   for j in range(k + 1)])
    # Gaussian moments E[x^i]
    mx = np.zeros(k + 1)
    for i in range(0, k + 1, 2):
        mx[i] = ar_sigma**i * float(np.prod(np.arange(i - 1, 0, -2))) if i else 1.0
    total = 0.0
    for j in range(k + 1):
        total += sum(comb(j, i) * my[j - i] * mx[i] for i in range(j + 1))
    return total


# ------------------------------------------------------------------------------------------- empirical

def record_tokens(records: tuple, req: np.ndarray, p: np.ndarray) -> np.ndarray:
    """acc_len at output position p of each request's record; past a list's end the list is replayed again,
    cyclically, from an offset drawn per (request, pass) (see `EmpiricalAcceptance`)."""
    flat, acc_off, lens, request_id, key = records
    L = lens[req]
    inside = p < L
    idx = np.empty(req.size, np.int64)
    idx[inside] = p[inside]
    beyond = ~inside
    if beyond.any():
        extra = p[beyond] - L[beyond]
        cycle = extra // L[beyond]
        start = np.floor(rng.uniform(key, request_id[req[beyond]], cycle) * L[beyond]).astype(np.int64)
        idx[beyond] = (start + extra % L[beyond]) % L[beyond]
    return flat[acc_off[req] + idx]


@dataclass
class EmpiricalAcceptance:
    """Replay of measured per-position acceptance lengths (SpecDecode-Bench style `acc_len` lists).

    A request's prefill emits output position 0; its first speculative step starts at position 1. A step
    starting at position p emits min(acc_len[p], k + 1) tokens and the next step starts at the position
    reached. Past the end of its list a request continues by replaying its own list again, cyclically,
    from a random offset drawn once per pass (counter-based, so the same for every scheduler): this keeps
    the list's bursty runs rather than shuffling single positions.

    Because every request starts its speculative steps at position 1 whatever the scheduler does, the
    whole step sequence is fixed in advance: it is precomputed once per replication (vectorised over
    requests) and `emitted` answers by step index (so `position_dependent` stays False)."""

    seq: np.ndarray      # flat tokens per decode step (uncapped by the output length)
    offset: np.ndarray   # start of each request's steps in `seq`
    length: np.ndarray   # number of precomputed steps (>= 1)
    k: int
    records: tuple | None = None  # (flat acc_len, start of each request's list, list lengths, request ids, key)
    record_k: int = 0    # the largest K the records can replay: max acc_len − 1

    indexed_by = "position"

    @classmethod
    def build(cls, lists: list[np.ndarray], request_id: np.ndarray, output_tokens: np.ndarray, k: int,
              key: np.uint64) -> EmpiricalAcceptance:
        n = len(lists)
        out = np.asarray(output_tokens, np.int64)
        lens = np.array([len(a) for a in lists], np.int64)
        acc_off = np.concatenate(([0], np.cumsum(lens)[:-1]))
        flat = np.concatenate(lists).astype(np.int64) if n else np.zeros(0, np.int64)
        records = (flat, acc_off, lens, np.asarray(request_id), key)
        cap = k + 1
        pos = np.ones(n, np.int64)
        steps_max = np.maximum(out - 1, 1)
        offset = np.concatenate(([0], np.cumsum(steps_max)[:-1]))
        seq = np.ones(int(steps_max.sum()), np.int64)
        count = np.zeros(n, np.int64)
        live = np.flatnonzero(pos < out)
        while live.size:
            p = pos[live]
            e = np.minimum(record_tokens(records, live, p), cap) if k > 0 else np.ones(live.size, np.int64)
            seq[offset[live] + count[live]] = e
            count[live] += 1
            pos[live] = p + e
            live = live[pos[live] < out[live]]
        record_k = int(flat.max()) - 1 if flat.size else 0
        return cls(seq, offset, np.maximum(count, 1), k, records, record_k)

    def accepted(self, req: np.ndarray, step: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Drafts accepted by a step starting at output `position` (>= 1), at this process's k (the maximum):
        min(acc_len[position], k + 1) − 1, the list replayed cyclically past its end as in `build`."""
        assert self.records is not None
        req = np.asarray(req)
        position = np.broadcast_to(np.asarray(position, np.int64), req.shape)
        if self.k == 0:
            return np.zeros(req.shape, np.int64)
        return np.minimum(record_tokens(self.records, req.ravel(), position.ravel()).reshape(req.shape),
                          self.k + 1) - 1

    def mean_tokens(self, req: np.ndarray) -> np.ndarray:
        """Mean tokens per precomputed step of each request (sizes the step table's pre-drawing only)."""
        req = np.asarray(req)
        n = self.length.size
        owner = np.repeat(np.arange(n), self.length)
        first = np.concatenate(([0], np.cumsum(self.length)[:-1])) if n else np.zeros(0, np.int64)
        rows = self.offset[owner] + np.arange(owner.size) - first[owner]
        sums = np.bincount(owner, weights=self.seq[rows], minlength=n)
        return sums[req] / self.length[req]

    def emitted(self, req: np.ndarray, step: np.ndarray, position: np.ndarray) -> np.ndarray:
        req = np.asarray(req)
        step = np.broadcast_to(np.asarray(step, np.int64), req.shape)
        return self.seq[self.offset[req] + np.minimum(step, self.length[req] - 1)]


def walk_mean_tokens_per_step(lists: list[np.ndarray], k: int) -> float:
    """The file's mean tokens per step at k: each list replayed from position 1 to its end (a step at p
    emits min(acc_len[p], k + 1, tokens left)), total tokens over total steps. Plain Python on purpose."""
    tokens = steps = 0
    for a in lists:
        p = 1
        while p < len(a):
            e = min(int(a[p]), k + 1, len(a) - p)
            tokens += e
            steps += 1
            p += e
    return tokens / steps


_RECORDS_CACHE: dict[tuple[str, float], object] = {}


def load_acceptance_table(path: str) -> object:
    """The acceptance records file (JSONL as in data.md, or its Parquet conversion) as a polars frame with
    columns dataset, method, request, prompt_tokens, output_tokens, acc_len (list<int16>)."""
    import os

    import polars as pl

    from lapsbench.errors import LapsbenchError

    if not os.path.isfile(path):
        raise LapsbenchError(f"speculation.acceptance.path: {path}: no such file; expected the acceptance "
                             "records (JSONL or Parquet, see docs/acceptance.md)")
    cache_key = (os.path.abspath(path), os.path.getmtime(path))
    if cache_key in _RECORDS_CACHE:
        return _RECORDS_CACHE[cache_key]
    try:
        df = pl.read_parquet(path) if path.endswith(".parquet") else pl.read_ndjson(path)
    except Exception as exc:  # polars raises several types for unreadable input
        raise LapsbenchError(f"speculation.acceptance.path: {path}: unreadable ({str(exc).splitlines()[0]})") from None
    need = ("dataset", "method", "acc_len")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise LapsbenchError(f"speculation.acceptance.path: {path}: missing columns {missing}; expected {list(need)}")
    df = df.with_columns(pl.col("acc_len").cast(pl.List(pl.Int16)))
    _RECORDS_CACHE[cache_key] = df
    return df


def acceptance_records(path: str, dataset: str, method: str) -> list[np.ndarray]:
    """The `acc_len` lists of one (dataset, method), in file order; errors name the valid choices."""
    import polars as pl

    from lapsbench.errors import LapsbenchError

    df = load_acceptance_table(path)
    assert isinstance(df, pl.DataFrame)
    datasets = sorted(df["dataset"].unique().to_list())
    if dataset not in datasets:
        raise LapsbenchError(f"speculation.acceptance.dataset: {dataset!r} not in {path} — expected one of {datasets}")
    sub = df.filter(pl.col("dataset") == dataset)
    methods = sorted(sub["method"].unique().to_list())
    if method not in methods:
        raise LapsbenchError(f"speculation.acceptance.method: {method!r} not in {path} for dataset {dataset!r} — "
                             f"expected one of {methods}")
    sub = sub.filter(pl.col("method") == method)
    lists = [np.asarray(a, np.int64) for a in sub["acc_len"].to_list()]
    lists = [a for a in lists if a.size >= 2]
    if not lists:
        raise LapsbenchError(f"speculation.acceptance: {path}: no usable records for {dataset}/{method}")
    return lists


# ------------------------------------------------------------------------------ draft length below the k drawn

def emitted_at(process, req: np.ndarray, step: np.ndarray, position: np.ndarray, k: int) -> np.ndarray:
    """Tokens emitted by steps drafting `k` <= the process's k: min(accepted, k) + 1 from the same draws, so
    every draft length sees the same acceptance randomness (common random numbers across K). A chain
    draft's first k positions: replaying records measured at K under k < K keeps their first k positions."""
    check_draft_length(process, k)
    return np.minimum(process.accepted(req, step, position), k) + 1


def check_draft_length(process, k: int) -> None:
    """One line (LapsbenchError) when a step would draft more than the process's draws can answer."""
    from lapsbench.errors import LapsbenchError

    if k < 0 or k > process.k:
        raise LapsbenchError(f"speculation: a step drafts K = {k}, but the acceptance process was built for "
                             f"K <= {process.k} (speculation.k); expected 0 <= K <= {process.k}")
    record_k = getattr(process, "record_k", None)
    if record_k is not None and k > record_k:
        raise LapsbenchError(f"speculation.acceptance: a step drafts K = {k}, but the acceptance records replay at "
                             f"most K = {record_k} (longest acc_len {record_k + 1}); expected K <= {record_k}")


def accepted_table(process, output_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, offset): every draw a request can need, flat, for the compiled engines. Request r's draw
    for a step is accepted[offset[r] + i], i = its decode-step counter (`indexed_by == "step"`, i in
    0..output_tokens − 2) or the step's starting output position (`"position"`, i in 1..output_tokens − 1);
    both fit in max(output_tokens, 1) slots per request. Values are capped at the process's k."""
    out = np.maximum(np.asarray(output_tokens, np.int64), 1)
    offset = np.concatenate(([0], np.cumsum(out)[:-1])).astype(np.int64)
    req = np.repeat(np.arange(out.size), out)
    i = np.arange(int(out.sum()), dtype=np.int64) - offset[req]
    if process.indexed_by == "position":
        return process.accepted(req, np.zeros_like(i), np.maximum(i, 1)), offset
    return process.accepted(req, i, np.zeros_like(i)), offset
