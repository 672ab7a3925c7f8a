"""`lapsbench trace ...` commands: thin wrappers that parse options, call the trace modules, write
atomically and print one summary line (or a table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lapsbench.fsutil import check_output
from lapsbench.trace.importers import FORMATS, ImportOptions, import_trace
from lapsbench.trace.info import stats_json, stats_table, trace_stats
from lapsbench.trace.schema import read_trace, write_trace
from lapsbench.trace.slicing import slice_trace
from lapsbench.trace.synth import ARRIVALS, DEFAULT_OUTPUT, DEFAULT_PROMPT, parse_alpha_beta, synth_trace

app = typer.Typer(help="Create, import, slice and inspect canonical traces.", no_args_is_help=True)
console = Console()

LENGTH_HELP = ("fixed:N | lognormal:median=M,sigma=S[,min=A,max=B] | geometric:mean=M[,max=B] | "
               "uniform:min=A,max=B | csv:PATH[:COLUMN]. The defaults follow the Azure conversation trace, "
               "clipped so that prompt + output <= 4096 tokens (Llama-2-7B's context, the default profile).")


def _done(out: Path, rows: int, span: float, note: str = "") -> None:
    console.print(f"wrote {out}: {rows:,} requests over {span:,.1f} s{note}", highlight=False)


@app.command("synth")
def synth_cmd(
    requests: Annotated[int, typer.Option("--requests", "-n", min=1, help="Number of requests.")],
    rate: Annotated[float, typer.Option("--rate", help="Mean arrival rate (requests/s).")],
    out: Annotated[Path, typer.Option("--out", help="Output canonical Parquet trace.")],
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of numpy Generator(SeedSequence(seed)).")] = 0,
    arrival: Annotated[str, typer.Option("--arrival", help=f"Inter-arrival law: {'|'.join(ARRIVALS)}.")] = "poisson",
    cv: Annotated[float | None, typer.Option("--cv", help="Inter-arrival CV (gamma only).")] = None,
    output_lengths: Annotated[str, typer.Option("--output-lengths", help=LENGTH_HELP)] = DEFAULT_OUTPUT,
    prompt_lengths: Annotated[str, typer.Option("--prompt-lengths", help=LENGTH_HELP)] = DEFAULT_PROMPT,
    lengths: Annotated[str | None, typer.Option(
        "--lengths", help="csv:PATH — resample (prompt, output) pairs jointly from a length-only CSV.")] = None,
    alpha_beta: Annotated[str | None, typer.Option(
        "--alpha-beta", help="MEAN,CONCENTRATION: add a per-request alpha ~ Beta, in [0, 1).")] = None,
) -> None:
    """Write a synthetic trace: seeded Poisson/Gamma arrivals and length distributions."""
    check_output(out, "--out")
    alpha = parse_alpha_beta(alpha_beta) if alpha_beta else None
    df = synth_trace(requests, rate, arrival=arrival, cv=cv, output=output_lengths, prompt=prompt_lengths,
                     lengths=lengths, alpha=alpha, seed=seed)
    write_trace(df, out)
    _done(out, df.height, float(df["arrival_s"][-1]))


@app.command("import")
def import_cmd(
    source: Annotated[Path, typer.Argument(help="Raw trace file (CSV or JSONL).")],
    out: Annotated[Path, typer.Option("--out", help="Output canonical Parquet trace, e.g. traces/NAME.parquet.")],
    fmt: Annotated[str | None, typer.Option(
        "--format", help=f"{'|'.join(FORMATS)}; detected from the header when omitted.")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="burstgpt: keep only this model (repeatable or comma-separated).")] = None,
    keep_failed: Annotated[bool, typer.Option(
        "--keep-failed", help="burstgpt: keep failed requests (output_tokens=1, failed=true).")] = False,
    drop_zero: Annotated[bool, typer.Option("--drop-zero", help="Drop requests with 0 prompt/output tokens.")] = False,
    rate: Annotated[float | None, typer.Option("--rate", help="lengths: arrival rate (requests/s).")] = None,
    arrival: Annotated[str, typer.Option("--arrival", help="lengths: poisson|gamma.")] = "poisson",
    cv: Annotated[float | None, typer.Option("--cv", help="lengths: inter-arrival CV (gamma).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="lengths: seed of the arrivals.")] = 0,
) -> None:
    """Convert a raw trace (azure, burstgpt, mooncake, vidur, lengths) into a canonical trace."""
    check_output(out, "--out", inputs=(source,))
    options = ImportOptions(models=tuple(m for spec in model or () for m in spec.split(",") if m),
                            keep_failed=keep_failed, drop_zero=drop_zero, rate=rate, arrival=arrival, cv=cv, seed=seed)
    report = import_trace(source, out, fmt, options)
    dropped = ", ".join(f"{v:,} {k}" for k, v in report.dropped.items())
    _done(out, report.rows_written, report.span_s, f" ({report.format}" + (f"; dropped {dropped})" if dropped else ")"))


@app.command("slice")
def slice_cmd(
    source: Annotated[Path, typer.Argument(help="Canonical Parquet trace.")],
    out: Annotated[Path, typer.Option("--out", help="Output canonical Parquet trace.")],
    start_s: Annotated[float, typer.Option("--start-s", help="Window start (trace seconds).")] = 0.0,
    duration_s: Annotated[float, typer.Option("--duration-s", help="Window length (0 = to the end).")] = 0.0,
    rate_scale: Annotated[float, typer.Option(
        "--rate-scale", help="Divide inter-arrival gaps by this (>1 = more load).")] = 1.0,
    first: Annotated[int, typer.Option("--first", help="Keep the first N requests (0 = all), applied last.")] = 0,
    sample: Annotated[int, typer.Option("--sample", help="Keep a random N requests of the window (order kept).")] = 0,
    sample_fraction: Annotated[float, typer.Option("--sample-fraction", help="Keep a random fraction instead.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the sampling.")] = 0,
) -> None:
    """Write a window / sample / rate-scaled copy of a canonical trace (request ids kept)."""
    check_output(out, "--out", inputs=(source,))
    flags = {"start_s": "--start-s", "duration_s": "--duration-s", "rate_scale": "--rate-scale",
             "max_requests": "--first", "sample_n": "--sample", "sample_fraction": "--sample-fraction"}
    df = slice_trace(read_trace(source), start_s=start_s, duration_s=duration_s, rate_scale=rate_scale,
                     max_requests=first, sample_n=sample, sample_fraction=sample_fraction, seed=seed, names=flags)
    write_trace(df, out)
    _done(out, df.height, float(df["arrival_s"][-1]))


@app.command("info")
def info_cmd(
    trace: Annotated[Path, typer.Argument(help="Canonical Parquet trace.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON instead of a table.")] = False,
) -> None:
    """Print rate, burstiness, rate over time, length percentiles and prompt-output correlation."""
    stats = trace_stats(read_trace(trace))
    if as_json:
        print(stats_json(stats))
    else:
        console.print(stats_table(stats, str(trace)))
