"""Synthetic traces: seeded arrivals (Poisson or Gamma with a chosen CV), length distributions from a small
SPEC language, and an optional per-request acceptance `alpha` from a Beta(mean, concentration).

Length SPEC (one string, used by `--prompt-lengths`, `--output-lengths`, `--lengths`):

    fixed:128                              every request has 128 tokens
    lognormal:median=130,sigma=1.0         exp(Normal(ln 130, 1.0)), rounded
    geometric:mean=100                     Geometric on {1, 2, ...} with that mean
    uniform:min=1,max=512                  integers, both ends included
    csv:PATH[:COLUMN]                      resampled with replacement from a column of a CSV

`lognormal`, `geometric` and `uniform` accept `min=` and `max=` bounds (values are clipped); every
length is at least 1. Each random component draws from its own child of `SeedSequence(seed)`, so changing
the output lengths leaves the arrivals of the same seed unchanged (common random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.errors import LapsbenchError

ARRIVALS = ("poisson", "gamma")
LENGTH_KINDS = {"fixed": (), "lognormal": ("median", "sigma"), "geometric": ("mean",), "uniform": ("min", "max"),
                "csv": ()}
BOUNDS = ("min", "max")
# Default lengths: the Azure LLM conversation trace 2023 (prompt median 1020 and p90 2735; output median 129
# and p90 424) as lognormals, clipped so that prompt + output <= 4096 tokens, the context of Llama-2-7B, the
# default profile's target: unclipped, 100,000 prompts reach 10^5 tokens and exceed its KV capacity.
DEFAULT_PROMPT = "lognormal:median=1020,sigma=0.75,max=3072"
DEFAULT_OUTPUT = "lognormal:median=130,sigma=0.9,max=1024"
PROMPT_COLUMN = "num_prefill_tokens"
OUTPUT_COLUMN = "num_decode_tokens"


class ArrivalStream:
    """Arrival times drawn in pieces of any size: the first request arrives at 0 and the sequence does not
    depend on how it is split, so a streamed import and a one-shot synth of the same seed agree."""

    def __init__(self, rate: float, arrival: str = "poisson", cv: float | None = None,
                 rng: np.random.Generator | None = None) -> None:
        if not (np.isfinite(rate) and rate > 0):
            raise LapsbenchError(f"--rate: {rate!r} — expected a number of requests per second > 0")
        if arrival not in ARRIVALS:
            raise LapsbenchError(f"--arrival: {arrival!r} — expected one of {', '.join(ARRIVALS)}")
        if arrival == "poisson" and cv is not None and cv != 1.0:
            raise LapsbenchError(f"--cv: {cv!r} — Poisson arrivals have CV 1; use --arrival gamma for another CV")
        if arrival == "gamma" and (cv is None or not (np.isfinite(cv) and cv > 0)):
            raise LapsbenchError(f"--cv: {cv!r} — gamma arrivals need an inter-arrival CV > 0")
        self.rate, self.arrival, self.cv = rate, arrival, cv
        self.rng = rng if rng is not None else np.random.default_rng()
        self._last: float | None = None

    def gaps(self, n: int) -> np.ndarray:
        """`n` inter-arrival gaps with mean 1/rate (and CV `cv` for gamma)."""
        if self.arrival == "poisson":
            return self.rng.exponential(1.0 / self.rate, n)
        shape = 1.0 / (self.cv * self.cv)  # type: ignore[operator]
        return self.rng.gamma(shape, 1.0 / (self.rate * shape), n)

    def next(self, n: int) -> np.ndarray:
        """The next `n` arrival times (seconds)."""
        gaps = self.gaps(n)
        start = 0.0
        if self._last is None and n:
            gaps[0] = 0.0
        elif self._last is not None:
            start = self._last
        times = start + np.cumsum(gaps)
        if n:
            self._last = float(times[-1])
        return times


@dataclass(frozen=True)
class LengthSpec:
    """A parsed length SPEC; `column` and `values` are set for `csv:`."""

    kind: str
    params: dict[str, float] = field(default_factory=dict)
    path: str = ""
    column: str = ""
    values: np.ndarray | None = None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw `n` integer lengths >= 1."""
        p = self.params
        if self.kind == "fixed":
            return np.full(n, int(p["value"]), dtype=np.int64)
        if self.kind == "csv":
            assert self.values is not None
            return self.values[rng.integers(0, len(self.values), n)]
        if self.kind == "lognormal":
            raw = np.rint(rng.lognormal(np.log(p["median"]), p["sigma"], n))
        elif self.kind == "geometric":
            raw = rng.geometric(1.0 / p["mean"], n).astype(np.float64)
        else:
            raw = rng.integers(int(p["min"]), int(p["max"]) + 1, n).astype(np.float64)
        lo = max(1.0, p.get("min", 1.0))
        hi = p.get("max", np.inf)
        return np.clip(raw, lo, hi).astype(np.int64)


def _number(option: str, text: str, key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not np.isfinite(number):
        raise LapsbenchError(f"{option}: {text!r}: {key}={value!r} — expected a finite number")
    return number


def read_length_column(path: str, column: str, option: str) -> np.ndarray:
    """All values of one integer column of a (small) length-only CSV; every value must be >= 1."""
    if not Path(path).is_file():
        raise LapsbenchError(f"{option}: {path}: no such file; expected a CSV with a {column!r} column")
    try:
        header = pl.read_csv(path, n_rows=0).columns
    except Exception as exc:  # polars raises several types for unreadable CSV
        raise LapsbenchError(f"{option}: {path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if column not in header:
        raise LapsbenchError(f"{option}: {path}: line 1: missing column {column!r}; has {header}")
    raw = pl.read_csv(path, columns=[column], schema_overrides={column: pl.String})[column]
    values = raw.cast(pl.Int64, strict=False)
    bad = (values.is_null() | (values < 1)).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise LapsbenchError(f"{path}: line {row + 2}, column {column!r}: {raw[row]!r} — expected an integer >= 1")
    if values.len() == 0:
        raise LapsbenchError(f"{option}: {path}: no rows; expected at least one length")
    return values.to_numpy()


RECORD_COLUMN = "acceptance_record"  # carried from a lengths CSV: the request's acceptance record (mapping = "column")


def _record_column(path: str) -> dict[str, np.ndarray]:
    """A lengths CSV's `acceptance_record` column (record indices >= 0), if it has one."""
    if RECORD_COLUMN not in pl.read_csv(path, n_rows=0).columns:
        return {}
    raw = pl.read_csv(path, columns=[RECORD_COLUMN], infer_schema=False)[RECORD_COLUMN]
    values = raw.cast(pl.Int64, strict=False)
    bad = (values.is_null() | (values < 0)).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise LapsbenchError(f"{path}: line {row + 2}, column {RECORD_COLUMN!r}: {raw[row]!r} — expected a record "
                             "index >= 0")
    return {RECORD_COLUMN: values.to_numpy()}


def parse_length_spec(text: str, option: str = "--output-lengths", default_column: str = OUTPUT_COLUMN) -> LengthSpec:
    """Parse a length SPEC (see the module docstring); errors name the option, the spec and what is expected."""
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in LENGTH_KINDS:
        raise LapsbenchError(f"{option}: {text!r} — expected fixed:N, lognormal:median=M,sigma=S, geometric:mean=M, "
                             "uniform:min=A,max=B or csv:PATH[:COLUMN]")
    if kind == "fixed":
        value = _number(option, text, "fixed", rest)
        if value < 1 or value != int(value):
            raise LapsbenchError(f"{option}: {text!r} — expected fixed:N with an integer N >= 1")
        return LengthSpec("fixed", {"value": value})
    if kind == "csv":
        path, column = rest, default_column
        if not Path(rest).is_file() and ":" in rest:
            path, column = rest.rsplit(":", 1)
        if not path:
            raise LapsbenchError(f"{option}: {text!r} — expected csv:PATH[:COLUMN]")
        return LengthSpec("csv", path=path, column=column, values=read_length_column(path, column, option))
    params: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        valid = LENGTH_KINDS[kind] + BOUNDS
        if not eq or key not in valid:
            raise LapsbenchError(f"{option}: {text!r}: {item!r} — expected key=value with key in {', '.join(valid)}")
        params[key] = _number(option, text, key, value)
    missing = [key for key in LENGTH_KINDS[kind] if key not in params]
    if missing:
        raise LapsbenchError(f"{option}: {text!r} — missing {', '.join(missing)}")
    if kind == "lognormal" and not (params["median"] > 0 and params["sigma"] >= 0):
        raise LapsbenchError(f"{option}: {text!r} — expected median > 0 and sigma >= 0")
    if kind == "geometric" and params["mean"] < 1:
        raise LapsbenchError(f"{option}: {text!r} — expected mean >= 1 (lengths start at 1)")
    if params.get("min", 1) > params.get("max", np.inf) or params.get("max", 1) < 1:
        raise LapsbenchError(f"{option}: {text!r} — expected 1 <= min <= max")
    return LengthSpec(kind, params)


def parse_alpha_beta(text: str) -> tuple[float, float]:
    """`MEAN,CONCENTRATION` for Beta(mean*c, (1-mean)*c)."""
    parts = text.split(",")
    if len(parts) != 2:
        raise LapsbenchError(f"--alpha-beta: {text!r} — expected MEAN,CONCENTRATION, e.g. 0.7,20")
    mean = _number("--alpha-beta", text, "mean", parts[0])
    conc = _number("--alpha-beta", text, "concentration", parts[1])
    if not (0 < mean < 1 and conc > 0):
        raise LapsbenchError(f"--alpha-beta: {text!r} — expected 0 < MEAN < 1 and CONCENTRATION > 0")
    return mean, conc


def synth_trace(n: int, rate: float, *, arrival: str = "poisson", cv: float | None = None,
                output: str | LengthSpec = DEFAULT_OUTPUT, prompt: str | LengthSpec = DEFAULT_PROMPT,
                lengths: str | None = None, alpha: tuple[float, float] | None = None, seed: int = 0) -> pl.DataFrame:
    """A canonical trace of `n` requests. `lengths="csv:PATH"` resamples (prompt, output) pairs jointly from
    a length-only CSV, keeping their correlation, and carries the CSV's `acceptance_record` column along
    (each request's record for `mapping = "column"` acceptance); otherwise `prompt` and `output` are drawn
    independently.
    `alpha=(mean, concentration)` adds a per-request Beta acceptance column, kept inside [0, 1)."""
    if n < 1:
        raise LapsbenchError(f"--requests: {n!r} — expected an integer >= 1")
    arrivals_ss, prompt_ss, output_ss, alpha_ss = np.random.SeedSequence(seed).spawn(4)
    times = ArrivalStream(rate, arrival, cv, np.random.default_rng(arrivals_ss)).next(n)
    if lengths is not None:
        kind, _, path = lengths.partition(":")
        if kind != "csv" or not path:
            raise LapsbenchError(f"--lengths: {lengths!r} — expected csv:PATH (a file with {PROMPT_COLUMN} "
                                 f"and {OUTPUT_COLUMN}); use --prompt-lengths/--output-lengths for distributions")
        prompts_all = read_length_column(path, PROMPT_COLUMN, "--lengths")
        outputs_all = read_length_column(path, OUTPUT_COLUMN, "--lengths")
        rows = np.random.default_rng(prompt_ss).integers(0, len(prompts_all), n)
        prompts, outputs = prompts_all[rows], outputs_all[rows]
        extra = {c: v[rows] for c, v in _record_column(path).items()}
    else:
        extra = {}
        if isinstance(prompt, str):
            prompt = parse_length_spec(prompt, "--prompt-lengths", PROMPT_COLUMN)
        if isinstance(output, str):
            output = parse_length_spec(output, "--output-lengths", OUTPUT_COLUMN)
        prompts = prompt.sample(np.random.default_rng(prompt_ss), n)
        outputs = output.sample(np.random.default_rng(output_ss), n)
    columns: dict[str, np.ndarray] = {
        "request_id": np.arange(n, dtype=np.int64), "arrival_s": times,
        "prompt_tokens": prompts.astype(np.int64), "output_tokens": outputs.astype(np.int64), **extra}
    if alpha is not None:
        mean, conc = alpha
        draws = np.random.default_rng(alpha_ss).beta(mean * conc, (1.0 - mean) * conc, n)
        columns["alpha"] = np.minimum(draws, np.nextafter(1.0, 0.0))
    return pl.DataFrame(columns)
