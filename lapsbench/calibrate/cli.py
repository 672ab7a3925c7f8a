"""`lapsbench calibrate ...` commands: measure (torch + GPU), fit (numpy), check."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Measure, fit and check per-GPU cost profiles.", no_args_is_help=True)

_console = Console()


def _command() -> str:
    return "lapsbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@app.command()
def measure(
    model: Annotated[list[str], typer.Option(help="Model to time: a known name (llama-68m, tinyllama-1.1b, "
                                             "llama2-7b, llama3-8b, llama2-13b) or NAME:hidden=H,intermediate=I,"
                                             "layers=L,heads=A,kv_heads=K,vocab=V. Repeat for several.")],
    out: Annotated[Path, typer.Option(help="Measured CSV to write (plus OUT.json with provenance).")],
    device: Annotated[str, typer.Option(help="cuda, or cpu for a debug run of the code path.")] = "cuda",
    batches: Annotated[str | None, typer.Option(help="Decode batch sizes, e.g. 1,2,4,8,16,32,64.")] = None,
    query_tokens: Annotated[str | None, typer.Option(help="Tokens per request in a target decode/verify "
                                                        "forward (1..k+1), e.g. 1,2,3,5,8.")] = None,
    draft_query_tokens: Annotated[str | None, typer.Option(help="The same for draft models (default 1).")] = None,
    contexts: Annotated[str | None, typer.Option(help="Cached tokens per request, e.g. 128,512,...,8192.")] = None,
    prefill_lengths: Annotated[str | None, typer.Option(help="Prompt lengths, e.g. 64,...,8192.")] = None,
    prefill_batches: Annotated[str | None, typer.Option(help="Prefill batch sizes, e.g. 1,2,4,8.")] = None,
    chunk_lengths: Annotated[str | None, typer.Option(help="Chunked-prefill chunk lengths.")] = None,
    chunk_contexts: Annotated[str | None, typer.Option(help="Cached tokens before a chunk.")] = None,
    kv_budget_gb: Annotated[float | None, typer.Option(help="KV cache to allocate (default: free memory).")] = None,
    deadline_s: Annotated[float, typer.Option(help="Stop starting configurations after this many seconds.")] = 0.0,
) -> None:
    """Time forwards of Llama-shaped models (random bf16 weights) in CUDA graphs; write the measured schema."""
    from lapsbench.calibrate.measure import grid_from_options, import_torch
    from lapsbench.calibrate.measure import measure as run_measure
    from lapsbench.calibrate.models import parse_model_spec
    from lapsbench.fsutil import check_output

    check_output(out, "--out")
    specs = [parse_model_spec(m) for m in model]
    grid = grid_from_options(dict(batches=batches, query_tokens=query_tokens, draft_query_tokens=draft_query_tokens,
                                  contexts=contexts, prefill_lengths=prefill_lengths, prefill_batches=prefill_batches,
                                  chunk_lengths=chunk_lengths, chunk_contexts=chunk_contexts,
                                  kv_budget_gb=kv_budget_gb))
    import_torch()
    rows = run_measure(specs, out, grid, device=device, deadline_s=deadline_s, command=_command(),
                       log=lambda s: _console.print(s, highlight=False))
    _console.print(f"wrote {len(rows)} rows to {out} (provenance in {out}.json)")


def _error_on(validation: str) -> str:
    """What a phase's error is measured on: held-out, LOO (leave-one-out) or "none held out"."""
    return "LOO" if validation == "leave-one-out" else validation


def _pct(x: float) -> str:
    """A fit error for the table: "–" where none was measured (no held-out step of that phase)."""
    return f"{100 * x:.2f}%" if math.isfinite(x) else "–"


@app.command()
def fit(
    out: Annotated[Path, typer.Option(help="Profile TOML to write, e.g. profiles/h100-llama2-7b.toml.")],
    measured: Annotated[Path | None, typer.Argument(help="Measured forwards, CSV or Parquet: gpu, model, phase, "
                                                    "batch, query_tokens, context, ms_median[, ms_p10, ms_p90]. "
                                                    "Optional with --steps.")] = None,
    steps: Annotated[list[Path] | None, typer.Option(help="Engine step log (docs/steplog.md), Parquet or CSV; "
                                                     "repeat for several logs of one engine. Alone, whole steps are "
                                                     "fitted; with MEASURED, the step-level terms on top of the "
                                                     "forward models.")] = None,
    target: Annotated[str | None, typer.Option(help="Target model (default: the largest measured).")] = None,
    draft: Annotated[list[str] | None, typer.Option(help="Draft model(s); the first is the default draft.")] = None,
    name: Annotated[str | None, typer.Option(help="Profile name (default: OUT's stem).")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU to use when the file holds several; for a step log alone, "
                                            "the GPU it was taken on (default: its meta.json).")] = None,
    gpu_memory_gb: Annotated[float | None, typer.Option(help="GPU memory (default: measure sidecar or "
                                                           "known GPU name).")] = None,
    host_link_gb_s: Annotated[float | None, typer.Option(help="Host<->device GB/s for swap (default: "
                                                            "measured, else 25).")] = None,
    model_config: Annotated[list[str] | None, typer.Option(help="Shape of a model unknown to lapsbench: "
                                                              "NAME:hidden=..,intermediate=..,layers=..,"
                                                              "heads=..,kv_heads=..,vocab=..")] = None,
    test_frac: Annotated[float, typer.Option(help="Share of rows held out for the reported error.")] = 0.25,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the held-out split.")] = 0,
    batch_sizes: Annotated[str | None, typer.Option(help="With --steps: the batch sizes the engine's decode "
                                                    "CUDA graphs are captured at, e.g. 1,2,4,8,16,32,64 (a step "
                                                    "runs at the smallest one >= its batch).")] = None,
    span_multiple: Annotated[int, typer.Option(help="With --steps: the engine pads each decode step's attention "
                                               "span (max context + k + 1) to this multiple (0: no padding).")] = 0,
    prefill_bucket: Annotated[int, typer.Option(help="With --steps: the engine pads each prefill chunk to this "
                                                "multiple of tokens; fit a correction per padded length (0: "
                                                "none).")] = 0,
) -> None:
    """Fit the cost model per model and phase (and per step phase from a step log); store coefficients and
    held-out error in a profile."""
    from lapsbench.calibrate.fit import fit_profile
    from lapsbench.calibrate.profile_file import STEP_LOG
    from lapsbench.errors import LapsbenchError
    from lapsbench.fsutil import check_output

    sizes: tuple[int, ...] = ()
    if batch_sizes:
        try:
            sizes = tuple(int(x) for x in batch_sizes.split(","))
        except ValueError:
            raise LapsbenchError(f"--batch-sizes: {batch_sizes!r}; expected comma-separated integers") from None
    check_output(out, "--out", inputs=tuple(p for p in (measured, *(steps or ())) if p is not None))
    fits, top = fit_profile(measured, out, target, list(draft or []), name, gpu, gpu_memory_gb, host_link_gb_s,
                            list(model_config or []), test_frac, seed, _command(), steps, sizes, span_multiple,
                            prefill_bucket)
    console = _console if _console.is_terminal else Console(width=140)  # a log: one line per row
    table = Table(title=f"{out}: held-out error ({top['gpu']})", collapse_padding=True)
    rows = [(m if m != STEP_LOG else f"{STEP_LOG} ({top['target']})", phase, st["form"], str(st["n_train"]),
             str(st["n_test"]), _error_on(st.get("validation", "held-out")), _pct(st["mape"]),
             _pct(st["max_ape"]))
            for m, phases in fits.items() for phase, st in phases.items()]
    columns = ("model", "phase", "form", "train", "test", "error on", "MAPE", "worst APE")
    # a cell may wrap at its spaces, but no word (a form such as "pnorm4+wide32", a number) is cut short: each
    # column is at least as wide as its longest word, and a terminal too narrow even for that gets a line per row
    widths = [max(len(w) for r in (columns, *rows) for w in [*r[j].split(), ""]) for j in range(len(columns))]
    if sum(widths) + 3 * len(columns) + 1 > console.width:
        console.print(table.title, highlight=False)
        for r in rows:
            console.print(f"  {r[0]} {r[1]}: {r[2]}; train {r[3]}, test {r[4]} ({r[5]}); MAPE {r[6]}, worst {r[7]}",
                          highlight=False)
    else:
        for col, width in zip(columns, widths, strict=True):
            table.add_column(col, justify="left" if col in ("model", "phase", "form", "error on") else "right",
                             min_width=width)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    if any(st.get("validation") == "leave-one-out" for phases in fits.values() for st in phases.values()):
        console.print("LOO, leave-one-out: phases with fewer than 12 rows are fitted on every row; their error "
                       "is each row's error when it is left out of the fit")
    console.print(f"kv_capacity_tokens = {top['kv_capacity_tokens']}  (target {top['target']}"
                   + (f", draft {top['draft']})" if "draft" in top else ")"))


@app.command()
def check(
    profile: Annotated[Path, typer.Argument(help="Fitted profile TOML.")],
    measured: Annotated[Path, typer.Argument(help="Measured rows (CSV or Parquet) in the calibration schema.")],
    gpu: Annotated[str | None, typer.Option(help="GPU to use when the file holds several.")] = None,
) -> None:
    """How well a profile predicts measurements: MAPE, worst case and bias per model and phase."""
    from lapsbench.calibrate.fit import check_profile

    rows = check_profile(profile, measured, gpu)
    table = Table(title=f"{profile} vs {measured}")
    for col in ("model", "phase", "rows", "MAPE", "worst APE", "bias"):
        table.add_column(col, justify="left" if col in ("model", "phase") else "right")
    for r in rows:
        table.add_row(r["model"], r["phase"], str(r["rows"]), f"{100 * r['mape']:.2f}%", f"{100 * r['max_ape']:.2f}%",
                      f"{100 * r['bias']:+.2f}%")
    _console.print(table)
