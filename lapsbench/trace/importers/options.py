"""Options of `trace import`, with the formats each one applies to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImportOptions:
    """`models`/`keep_failed`: burstgpt; `rate`/`arrival`/`cv`/`seed`: lengths; `drop_zero`: every format
    (drop requests with 0 prompt or output tokens instead of failing, since the canonical schema needs >= 1)."""

    models: tuple[str, ...] = ()
    keep_failed: bool = False
    drop_zero: bool = False
    rate: float | None = None
    arrival: str = "poisson"
    cv: float | None = None
    seed: int = 0
