"""The `lapsbench` command line: parse, call, render, and map bad input to one line and exit code 2."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from lapsbench.calibrate.cli import app as calibrate_app
from lapsbench.errors import LapsbenchError

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from lapsbench.runner import RunResult
    from lapsbench.scenario import Scenario
from lapsbench.trace.cli import app as trace_app

app = typer.Typer(
    name="lapsbench",
    help="Trace-replay benchmark for scheduling speculative-decoding LLM inference requests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(trace_app, name="trace")
app.add_typer(calibrate_app, name="calibrate")


@app.command()
def run(
    scenario: Path = typer.Argument(..., help="scenario TOML"),
    out: Path | None = typer.Option(None, "--out", help="results directory (default: [output] dir)"),
    seed: int | None = typer.Option(None, "--seed", help="override the scenario's seed"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Simulate every scheduler of a scenario on the same requests; write results and print a table."""
    from rich.console import Console

    from lapsbench.report import command_line, print_summary, write_results
    from lapsbench.runner import run_scenario
    from lapsbench.scenario import load_scenario

    spec = load_scenario(scenario)
    if seed is not None:
        if seed < 0:
            raise LapsbenchError(f"--seed: {seed} — expected an integer >= 0")
        spec = dataclasses.replace(spec, seed=seed)
    if out is not None:
        spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, dir=str(out)))
    console = Console(stderr=True)
    result = run_scenario(spec) if quiet or not console.is_terminal else _run_with_progress(spec, console)
    summary, _ = write_results(spec.out_dir, spec, result, command_line())
    print_summary(summary, f"{spec.name}: {result.workload.n} requests × {spec.replications} replication(s), "
                  f"k = {spec.speculation.k}")
    if not quiet:
        console.print(f"results in {spec.out_dir}/ ({result.wall_s:.2f} s)")


@app.command()
def compare(
    sources: list[Path] = typer.Argument(..., help="a scenario TOML, or one or more results directories"),
    schedulers: str | None = typer.Option(None, "--schedulers", help="comma-separated labels (or names) to keep"),
    baseline: str | None = typer.Option(None, "--baseline", help="label to compare against (default fcfs, "
                                        "else the first scheduler)"),
    rates: str | None = typer.Option(None, "--rates", help="load sweep: multiples of the trace's rate "
                                     "(0.5,1,1.5) and/or absolute requests/s (2rps,4rps)"),
    out: Path | None = typer.Option(None, "--out", help="results directory (default: the scenario's output dir "
                                    "+ '-compare'; for results directories: print only unless given)"),
    seed: int | None = typer.Option(None, "--seed", help="override the scenario's seed"),
    replications: int | None = typer.Option(None, "--replications", help="override the scenario's replications"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="write PNG and SVG plots under OUT/plots/"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress lines"),
) -> None:
    """Compare schedulers on identical requests: paired changes against a baseline with 95% CIs, load
    sweeps with saturation marks, plots; or rebuild the tables from saved results directories."""
    from rich.console import Console

    from lapsbench.compare import load_results, parse_rates, run_comparison, select_schedulers, write_comparison
    from lapsbench.report import command_line
    from lapsbench.report_compare import rich_tables
    from lapsbench.scenario import load_scenario

    wanted = [w.strip() for w in schedulers.split(",") if w.strip()] if schedulers is not None else None
    if wanted is not None and not wanted:
        raise LapsbenchError(f"--schedulers: {schedulers!r} — expected comma-separated scheduler labels")
    console = Console(stderr=True)
    if len(sources) == 1 and sources[0].suffix == ".toml":
        spec = select_schedulers(load_scenario(sources[0]), wanted)
        if seed is not None:
            if seed < 0:
                raise LapsbenchError(f"--seed: {seed} — expected an integer >= 0")
            spec = dataclasses.replace(spec, seed=seed)
        if replications is not None:
            if replications < 1:
                raise LapsbenchError(f"--replications: {replications} — expected an integer >= 1")
            spec = dataclasses.replace(spec, replications=replications)
        loads = parse_rates(rates) if rates is not None else None
        show = not quiet and console.is_terminal
        comp = run_comparison(spec, loads, baseline, _compare_progress(console) if show else None)
        target: Path | None = out or Path(f"{spec.out_dir}-compare")
    else:
        if any(src.suffix == ".toml" for src in sources):
            raise LapsbenchError("compare: give one scenario .toml, or results directories — not both")
        for flag, value in (("--rates", rates), ("--seed", seed), ("--replications", replications)):
            if value is not None:
                raise LapsbenchError(f"{flag}: only with a scenario .toml — results directories are not re-simulated")
        comp = load_results(sources, baseline, wanted)
        target = out
    screen = Console()
    if not screen.is_terminal:
        screen = Console(width=160)   # a pipe or a log: keep rows on one line rather than wrap at 80
    for table in rich_tables(comp):
        screen.print(table)
    if target is not None:
        write_comparison(target, comp, command_line(), plots=plots)
        if not quiet:
            console.print(f"results in {target}/")


@app.command()
def validate(
    real: Path = typer.Argument(..., help="results directory of the real run (lapsbench replay, or any engine's "
                                "requests in the results layout)"),
    sim: Path = typer.Argument(..., help="results directory of the simulation (lapsbench run, same scenario and "
                               "seed)"),
    out: Path = typer.Option(..., "--out", help="directory to write validation.md, validation.json and plots/"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="write the per-request JCT plot (PNG and SVG)"),
) -> None:
    """Side by side: real against simulated mean/p50/p99 JCT, TTFT, TPOT per scheduler, per-request errors,
    scheduler ranking, accuracy targets (docs/validation.md)."""
    from rich.console import Console

    from lapsbench.report import command_line
    from lapsbench.validate import markdown, write_validation
    from lapsbench.validate import validate as run_validate

    result = run_validate(real, sim)
    write_validation(out, result, command_line(), plots=plots)
    Console(width=160).print(markdown(result), highlight=False, markup=False)
    Console(stderr=True).print(f"validation in {out}/")


def _compare_progress(console: Console) -> Callable[[float], Callable[[str, int, int, int], None]]:
    """A factory of runner progress callbacks, one per load point, printing a line per finished
    (scheduler, replication): a sweep has many short runs, for which one line each reads better than
    a stack of bars."""
    def factory(scale: float) -> Callable[[str, int, int, int], None]:
        def progress(label: str, replication: int, done: int, total: int) -> None:
            if done == total:
                console.print(f"  load ×{scale:g}: {label} (rep {replication}) done", highlight=False)
        return progress
    return factory


def _run_with_progress(spec: Scenario, console: Console) -> RunResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lapsbench.runner import run_scenario

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[tuple[str, int], int] = {}

        def progress(label: str, replication: int, done: int, total: int) -> None:
            key = (label, replication)
            if key not in tasks:
                tasks[key] = bar.add_task(f"{label} (rep {replication})", total=total)
            bar.update(tasks[key], completed=done)

        return run_scenario(spec, progress)


def main() -> None:
    """Console entry point: LapsbenchError becomes `lapsbench: <message>` on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except LapsbenchError as exc:
        print(f"lapsbench: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("lapsbench: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors and aborts
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
    if isinstance(code, int) and code:  # typer returns exit codes here instead of raising (Ctrl-C: 130)
        if code == 130:
            print("lapsbench: interrupted", file=sys.stderr)
        sys.exit(code)


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., help="sweep TOML (base scenario + axes; see docs/sweeps.md)"),
    backend: str = typer.Option("local", "--backend", help="local (process pool) or ray"),
    workers: int | None = typer.Option(None, "--workers", help="parallel points (default: CPU count)"),
    address: str | None = typer.Option(None, "--address", help="Ray cluster to join (default: start a local one)"),
    out: Path | None = typer.Option(None, "--out", help="sweep directory (default: out in the sweep file)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Run a scenario over a grid of overrides (resumable); merge results; optionally search capacity."""
    from lapsbench.sweep import load_sweep, print_sweep, run_sweep_with_progress

    spec = load_sweep(sweep_file, out)
    result = run_sweep_with_progress(spec, backend, workers, address, quiet)
    print_sweep(result)
    if result.failed:
        sys.exit(1)  # the other points' results are written; re-running retries the failed ones
