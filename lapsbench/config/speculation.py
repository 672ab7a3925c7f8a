"""`[speculation] adaptive`: how the draft length K is chosen per step (or per request), validated once at
the edge. Without it every decoding request drafts the fixed `speculation.k` every step; with it that `k`
is the maximum any choice may take (docs/speculation.md §2). No numba here: the compiled choosers that
apply these settings are in `lapsbench.models.kchoice`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lapsbench.config.scenario import _at_least_one, _f, _open_unit, _positive, parse_table
from lapsbench.errors import LapsbenchError

# vLLM Dynamic SD's documented Llama-3.1-8B EAGLE-3 example: K by the number of decoding requests.
VLLM_TABLE = ((1, 5), (17, 4), (33, 3), (65, 1), (129, 0))


@dataclass(frozen=True)
class BatchTableSpec:
    kind: str = _f("batch-table", "K by the number of decoding requests in the step (vLLM Dynamic SD)",
                   choices=("batch-table",))
    table: tuple[tuple[int, int], ...] = _f(VLLM_TABLE, "[[batch, K], ...]: from `batch` decoding requests on "
                                            "(until the next row), K draft tokens; first row batch 1, batch "
                                            "strictly increasing, 0 <= K <= speculation.k")


@dataclass(frozen=True)
class GoodputSpec:
    kind: str = _f("goodput", "per step, the K maximising expected emitted tokens per second of the step from "
                   "the cost model and each request's acceptance observed so far (SmartSpec)", choices=("goodput",))
    k_max: int = _f(0, "largest K considered, 1..speculation.k; default (0): speculation.k", None)
    per_request: bool = _f(False, "choose K per request (mixed-K step) instead of one K shared by the batch")
    prior_alpha: float = _f(0.7, "prior mean of a request's per-token acceptance before it has drafted",
                            _open_unit)
    prior_strength: float = _f(4.0, "weight of the prior, in pseudo draft trials (accepted + rejected)",
                               _positive)


@dataclass(frozen=True)
class OffUnderLoadSpec:
    kind: str = _f("off-under-load", "plain decoding (K = 0) while at least `batch` requests decode, "
                   "speculation.k otherwise (Nightjar-style)", choices=("off-under-load",))
    batch: int = _f(64, "decoding requests from which speculation is switched off", _at_least_one)
    free_draft_memory: bool = _f(False, "while off, the draft's KV memory returns to the target's capacity")


ADAPTIVE_KINDS: dict[str, type] = {"batch-table": BatchTableSpec, "goodput": GoodputSpec,
                                   "off-under-load": OffUnderLoadSpec}
Adaptive = BatchTableSpec | GoodputSpec | OffUnderLoadSpec


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_table_rows(raw: Any, where: str, k: int) -> tuple[tuple[int, int], ...]:
    """[[batch, K], ...] → a tuple of int pairs: first row batch 1, batch strictly increasing, 0 <= K <= k."""
    if not isinstance(raw, list) or not raw:
        raise LapsbenchError(f"{where}: {raw!r} — expected a non-empty list of [batch, K] pairs, e.g. "
                             "[[1, 5], [17, 4], [33, 3], [65, 1], [129, 0]]")
    rows = []
    for i, row in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(row, list) or len(row) != 2 or not all(_is_int(v) for v in row):
            raise LapsbenchError(f"{at}: {row!r} — expected a [batch, K] pair of integers")
        batch, kk = row
        if i == 0 and batch != 1:
            raise LapsbenchError(f"{at}: batch {batch} — expected the first row to start at batch 1")
        if rows and batch <= rows[-1][0]:
            raise LapsbenchError(f"{at}: batch {batch} after batch {rows[-1][0]} — expected batch sizes "
                                 "strictly increasing")
        if kk < 0:
            raise LapsbenchError(f"{at}: K {kk} — expected K >= 0 draft tokens")
        if kk > k:
            raise LapsbenchError(f"{at}: K {kk} — expected K <= speculation.k = {k} (the maximum draft length; "
                                 "raise speculation.k)")
        rows.append((batch, kk))
    return tuple(rows)


def parse_adaptive(raw: Any, where: str, k: int) -> Adaptive:
    """`speculation.adaptive` table → its frozen spec, checked against the fixed maximum `k`."""
    if not isinstance(raw, dict):
        raise LapsbenchError(f"{where}: {raw!r} — expected a table like {{ kind = \"batch-table\", table = "
                             "[[1, 5], [17, 4]] }")
    kind = raw.get("kind")
    if kind not in ADAPTIVE_KINDS:
        raise LapsbenchError(f"{where}.kind: {kind!r} — expected one of {sorted(ADAPTIVE_KINDS)}")
    if k < 1:
        raise LapsbenchError(f"{where}: {kind} needs speculation.k >= 1 (the largest K it may choose); "
                             f"speculation.k = {k}")
    cls = ADAPTIVE_KINDS[kind]
    spec = parse_table(cls, {key: v for key, v in raw.items() if key != "table" or cls is not BatchTableSpec}, where)
    if cls is BatchTableSpec:
        if "table" not in raw:
            raise LapsbenchError(f"{where}.table: missing — expected [[batch, K], ...], e.g. "
                                 "[[1, 5], [17, 4], [33, 3], [65, 1], [129, 0]]")
        spec = dataclasses.replace(spec, table=_parse_table_rows(raw["table"], f"{where}.table", k))
    elif cls is GoodputSpec:
        if "k_max" not in raw:
            spec = dataclasses.replace(spec, k_max=k)
        elif not 1 <= spec.k_max <= k:
            raise LapsbenchError(f"{where}.k_max: {spec.k_max} — expected an integer in 1..speculation.k = {k}")
    return spec


def with_adaptive(speculation: Any, raw: Any) -> Any:
    """`speculation` (a SpeculationSpec) with its `adaptive` parsed from the raw TOML value."""
    return dataclasses.replace(speculation, adaptive=parse_adaptive(raw, "speculation.adaptive", speculation.k))


def largest_k(spec: Adaptive | None, k: int) -> int:
    """The largest K a step may run under `spec` (the fixed `k` without one)."""
    if isinstance(spec, BatchTableSpec):
        return max(kk for _, kk in spec.table)
    if isinstance(spec, GoodputSpec):
        return spec.k_max
    return k


def batch1_k(spec: Adaptive | None, k: int) -> int | None:
    """The draft length every step runs at batch size 1, where the number of decoding requests is always 1: the
    table's batch-1 row, or off-under-load's k (0 when its threshold is batch 1); `k` without a spec. None for
    goodput, whose K changes per step with the request's acceptance (lapsbench.engine.batch1_goodput)."""
    if spec is None:
        return k
    if isinstance(spec, BatchTableSpec):
        return spec.table[0][1]
    if isinstance(spec, OffUnderLoadSpec):
        return 0 if spec.batch <= 1 else k
    return None


def frees_draft_memory(spec: Adaptive | None) -> bool:
    """off-under-load with `free_draft_memory = true`: while SD is off the draft's KV memory returns to the
    target's capacity (lapsbench/engine/adaptive.py; the profile must say how many bytes that is)."""
    return isinstance(spec, OffUnderLoadSpec) and spec.free_draft_memory
