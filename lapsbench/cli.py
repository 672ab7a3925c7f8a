"""The `lapsbench` command line: parse, call, render, and map bad input to one line and exit code 2."""

from __future__ import annotations

import dataclasses
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from lapsbench import __version__
from lapsbench.calibrate.cli import app as calibrate_app
from lapsbench.errors import LapsbenchError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from rich.console import Console
    from rich.progress import Progress, ProgressColumn

    from lapsbench.config.scenario import Scenario
    from lapsbench.run.runner import RunResult
from lapsbench.trace.cli import app as trace_app

# Plain (click-style) help: typer's rich help shows a `<bool>` metavar on every flag (`--quiet <bool>` invites
# `--quiet true`) and reads `[output]` in help texts as markup. `-h` is `--help` everywhere.
app = typer.Typer(
    name="lapsbench",
    help="Trace-replay benchmark for scheduling speculative-decoding LLM inference requests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(trace_app, name="trace")
app.add_typer(calibrate_app, name="calibrate")


def _show_version(value: bool) -> None:
    if value:
        print(f"lapsbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Trace-replay benchmark for scheduling speculative-decoding LLM inference requests."""


SCHEDULERS_HELP = ("comma-separated schedulers to run, in this order: labels of the scenario (with their "
                   "parameters), or any registered scheduler name (default parameters)")
SET_HELP = ("override a scenario key: KEY.PATH=VALUE with a TOML value, e.g. speculation.k=2 or "
            "'speculation.acceptance={kind=\"fixed\",alpha=0.6}'; repeatable")


def _scheduler_list(text: str | None) -> list[str] | None:
    """--schedulers a,b → ["a", "b"] (None when not given)."""
    if text is None:
        return None
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    if not wanted:
        raise LapsbenchError(f"--schedulers: {text!r} — expected comma-separated scheduler labels or names")
    return wanted


@app.command()
def run(
    scenario: Path = typer.Argument(..., help="scenario TOML"),
    out: Path | None = typer.Option(None, "--out", help="results directory (default: the scenario's output.dir)"),
    seed: int | None = typer.Option(None, "--seed", min=0, help="override the scenario's seed"),
    schedulers: str | None = typer.Option(None, "--schedulers", help=SCHEDULERS_HELP),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    plots: bool = typer.Option(False, "--plots", help="also write the plots of compare under OUT/plots/"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Simulate every scheduler of a scenario on the same requests; write results and print a table."""
    from rich.console import Console

    from lapsbench.config.scenario import load_scenario
    from lapsbench.run.compare import select_schedulers

    spec = select_schedulers(load_scenario(scenario, overrides or ()), _scheduler_list(schedulers))
    if seed is not None:
        spec = dataclasses.replace(spec, seed=seed)
    if out is not None:
        spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, dir=str(out)))
    console = Console(stderr=True)
    _check_results_dir(spec.out_dir, "--out" if out is not None else f"{scenario}: output.dir", quiet, console)
    # the engines (numba) are imported once the input is known to be good: a bad scenario fails in a moment
    from lapsbench.results.render import print_summary
    from lapsbench.results.writer import command_line
    from lapsbench.run.output import write_results
    from lapsbench.run.runner import run_scenario

    result = run_scenario(spec) if quiet or not console.is_terminal else _run_with_progress(spec, console)
    summary, _ = write_results(spec.out_dir, spec, result, command_line())
    if plots:
        from lapsbench.fsutil import atomic_dir
        from lapsbench.results.plots import write_plots
        from lapsbench.run.compare import comparison_of_run

        with atomic_dir(spec.out_dir / "plots") as tmp:
            write_plots(comparison_of_run(spec, result), tmp)
    print_summary(summary, f"{spec.name}: {result.workload.n} requests × {spec.replications} replication(s), "
                  f"k = {spec.speculation.k}")
    if not quiet:
        console.print(f"results in {spec.out_dir}/ ({result.wall_s:.2f} s)", soft_wrap=True)


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), metavar="DIR", help="folder to write into (created if missing)"),
) -> None:
    """Write a runnable quickstart for a new project: DIR/scenarios/quickstart.toml and the trace it replays
    (its profile, h100-llama2-7b, ships with lapsbench). Existing files are never overwritten."""
    from lapsbench.resources import write_quickstart

    written = write_quickstart(directory)
    print("wrote " + ", ".join(str(path) for path in written))
    print(f"next: cd {directory} && lapsbench run scenarios/quickstart.toml")


@app.command()
def compare(
    sources: list[Path] = typer.Argument(..., help="a scenario TOML, or one or more results directories"),
    schedulers: str | None = typer.Option(None, "--schedulers", help=SCHEDULERS_HELP + "; for results "
                                          "directories, labels to keep"),
    baseline: str | None = typer.Option(None, "--baseline", help="label to compare against (default fcfs, "
                                        "else the first scheduler)"),
    rates: str | None = typer.Option(None, "--rates", help="load sweep: multiples of the trace's rate "
                                     "(0.5,1,1.5) and/or absolute requests/s (2rps,4rps)"),
    out: Path | None = typer.Option(None, "--out", help="results directory (default: the scenario's output dir "
                                    "+ '-compare'; for results directories: print only unless given)"),
    seed: int | None = typer.Option(None, "--seed", min=0, help="override the scenario's seed"),
    replications: int | None = typer.Option(None, "--replications", min=1, help="override the scenario's replications"),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="write PNG and SVG plots under OUT/plots/"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress lines"),
) -> None:
    """Compare schedulers on identical requests: paired changes against a baseline with 95% CIs, load
    sweeps with saturation marks, plots; or rebuild the tables from saved results directories."""
    from rich.console import Console

    from lapsbench.config.scenario import load_scenario
    from lapsbench.results.comparison import load_results
    from lapsbench.results.render_compare import rich_tables
    from lapsbench.results.writer import command_line, write_comparison
    from lapsbench.run.compare import parse_rates, run_comparison, select_schedulers

    wanted = _scheduler_list(schedulers)
    console = Console(stderr=True)
    if len(sources) == 1 and sources[0].suffix == ".toml":
        spec = select_schedulers(load_scenario(sources[0], overrides or ()), wanted)
        if seed is not None:
            spec = dataclasses.replace(spec, seed=seed)
        if replications is not None:
            spec = dataclasses.replace(spec, replications=replications)
        loads = parse_rates(rates) if rates is not None else None
        show = not quiet and console.is_terminal
        target: Path | None = out or Path(f"{spec.out_dir}-compare")
        _check_results_dir(target, "--out" if out is not None else f"{sources[0]}: output.dir + '-compare'",
                           quiet, console)
        with _compare_progress(console) if show else nullcontext() as factory:
            comp = run_comparison(spec, loads, baseline, factory)
    else:
        if any(src.suffix == ".toml" for src in sources):
            raise LapsbenchError("compare: give one scenario .toml, or results directories — not both")
        for flag, value in (("--rates", rates), ("--seed", seed), ("--replications", replications),
                            ("--set", overrides)):
            if value is not None:
                raise LapsbenchError(f"{flag}: only with a scenario .toml — results directories are not re-simulated")
        target = out
        if target is not None:
            _check_results_dir(target, "--out", quiet, console, inputs=tuple(sources))
        comp = load_results(sources, baseline, wanted)
    screen = Console()
    if not screen.is_terminal:
        screen = Console(width=160)   # a pipe or a log: keep rows on one line rather than wrap at 80
    for table in rich_tables(comp):
        screen.print(table)
    if target is not None:
        write_comparison(target, comp, command_line(), plots=plots)
        if not quiet:
            console.print(f"results in {target}/", soft_wrap=True)


def _check_results_dir(path: Path, what: str, quiet: bool, console: Console, inputs: tuple[Path, ...] = ()) -> None:
    """Before any simulation: refuse a results directory that cannot be written (one line, exit 2), and say
    on stderr (unless --quiet) that earlier results there will be replaced."""
    from lapsbench.fsutil import check_output

    if check_output(path, what, kind="dir", marker="meta.json", inputs=inputs) and not quiet:
        console.print(f"replacing the earlier results in {path}/", highlight=False, soft_wrap=True)


@contextmanager
def _progress_display(console: Console, *columns: ProgressColumn) -> Iterator[Progress]:
    """A transient rich Progress (spinner, `columns`, elapsed time) on `console`, with a row "compiling the
    engines ..." shown while numba compiles (a cold cache: the first run after installing or changing
    lapsbench) — nothing on a warm cache."""
    from rich.progress import Progress, SpinnerColumn, TimeElapsedColumn

    from lapsbench.progress import on_compile

    with Progress(SpinnerColumn(), *columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        notice = bar.add_task("compiling the engines (first run after install, ~30 s)", total=None, visible=False)

        def compiling(started: bool) -> None:
            if started:
                bar.reset(notice, visible=True)
            else:
                bar.update(notice, visible=False)

        with on_compile(compiling):
            yield bar


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

    from lapsbench.fsutil import check_output
    from lapsbench.results.validate import estimates_line, markdown, write_validation
    from lapsbench.results.validate import validate as run_validate
    from lapsbench.results.writer import command_line

    check_output(out, "--out", kind="dir", inputs=(real, sim))
    result = run_validate(real, sim)
    write_validation(out, result, command_line(), plots=plots)
    Console(width=160).print(markdown(result), highlight=False, markup=False)
    if result.estimates["same"] is False:
        warning = estimates_line(result).replace("**", "")  # Markdown bold, for validation.md only
        Console(stderr=True).print(f"warning: {warning}", highlight=False, markup=False)
    Console(stderr=True).print(f"validation in {out}/")


@contextmanager
def _compare_progress(console: Console) -> Iterator[Callable[[float], Callable[[str, int, int, int], None]]]:
    """A factory of runner progress callbacks, one per load point, printing a line per finished
    (scheduler, replication): a sweep has many short runs, for which one line each reads better than
    a stack of bars. The compile notice shows below the lines while numba compiles."""
    from rich.progress import TextColumn

    def factory(scale: float) -> Callable[[str, int, int, int], None]:
        def progress(label: str, replication: int, done: int, total: int) -> None:
            if done == total:
                console.print(f"  load ×{scale:g}: {label} (rep {replication}) done", highlight=False)
        return progress

    with _progress_display(console, TextColumn("{task.description}")):
        yield factory


def _run_with_progress(spec: Scenario, console: Console) -> RunResult:
    """`run_scenario` under one bar over all its runs (scheduler × replication), the current run and its
    request count in the description, updated ~10 times a second by the engines. One row: rich renders
    it in ~1 ms, ~1% of a core at 10 frames a second (a row per run would add ~0.5 ms each)."""
    from rich.progress import BarColumn, ProgressColumn, Task, TextColumn
    from rich.text import Text

    from lapsbench.run.runner import run_scenario

    class Runs(ProgressColumn):
        def render(self, task: Task) -> Text:  # blank for the compile notice, which has no total
            return Text("" if task.total is None else f"{int(task.completed)}/{int(task.total)} runs",
                        style="progress.download")

    with _progress_display(console, TextColumn("{task.description}"), BarColumn(), Runs()) as bar:
        task = bar.add_task("preparing the workload", total=len(spec.scheduler) * spec.replications)
        finished = 0  # runs done
        width = max(len(s.label) for s in spec.scheduler)

        def progress(label: str, replication: int, done: int, total: int) -> None:
            nonlocal finished
            finished += done >= total
            bar.update(task, completed=finished + (done / total if done < total else 0),
                       description=f"{label:<{width}} (rep {replication}) {done:>{len(f'{total:,}')},}/{total:,}")

        return run_scenario(spec, progress)


def main(args: list[str] | None = None) -> None:
    """Console entry point. Whatever goes wrong ends in one line on stderr, never a traceback: bad input
    (LapsbenchError) and usage errors (typer's: unknown option, missing argument, bad value) exit 2, a file
    system error exits 2 naming the path, running out of memory exits 2, Ctrl-C exits 130. Help and --version
    exit 0."""
    try:
        code = app(args=args, prog_name="lapsbench", standalone_mode=False)
    except LapsbenchError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130, prefix="lapsbench: ")
    except typer.exceptions.TyperException as exc:  # typer's usage errors (typer vendors click: never import it)
        _usage_error(exc)
    except typer.Abort:
        _fail("aborted", 1, prefix="lapsbench: ")
    except OSError as exc:  # a file that could not be read or written after the checks before work
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}", 2)
    except MemoryError:
        _fail("out of memory — expected a smaller workload (trace.max_requests, trace.duration_s)", 2)
    if isinstance(code, int) and code:  # typer returns exit codes here instead of raising (Ctrl-C: 130)
        if code == 130:
            print("lapsbench: interrupted", file=sys.stderr)
        sys.exit(code)


def _fail(message: str, code: int, prefix: str = "lapsbench: error: ") -> NoReturn:
    print(prefix + " ".join(message.split()), file=sys.stderr)  # one line, whatever the message holds
    sys.exit(code)


def _usage_error(exc: typer.exceptions.TyperException) -> NoReturn:
    """One line for a usage error, with the command to ask for help; a group called without a command
    (`lapsbench trace`) prints its help first."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "lapsbench"
    where = command.removeprefix("lapsbench").strip()
    where = f"{where}: " if where else ""
    if type(exc).__name__ == "NoArgsIsHelpError":
        print(exc.format_message())
        _fail(f"{where}missing command — expected one of the commands listed above", 2)
    _fail(f"{where}{exc.format_message()} (see '{command} --help')", 2)


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., help="sweep TOML (base scenario + axes; see docs/sweeps.md)"),
    backend: str = typer.Option("local", "--backend", help="local (process pool) or ray"),
    workers: int | None = typer.Option(None, "--workers", min=1, help="parallel points (default: CPU count)"),
    address: str | None = typer.Option(None, "--address", help="Ray cluster to join (default: start a local one)"),
    out: Path | None = typer.Option(None, "--out", help="sweep directory (default: out in the sweep file)"),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP + "; applies to the base scenario"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="plot each main metric against each numeric "
                               "axis under OUT/plots/"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Run a scenario over a grid of overrides (resumable); merge results; print a table per point and
    scheduler; plot the metrics against the axes; optionally search capacity."""
    from lapsbench.fsutil import check_output
    from lapsbench.run.sweep import load_sweep, print_sweep, run_sweep_with_progress

    spec = load_sweep(sweep_file, out, overrides or ())
    check_output(spec.out, "--out" if out is not None else f"{sweep_file}: sweep.out", kind="dir")
    result = run_sweep_with_progress(spec, backend, workers, address, quiet, plots)
    print_sweep(result)
    if result.failed:
        sys.exit(1)  # the other points' results are written; re-running retries the failed ones


@app.command()
def replay(
    scenario: Path = typer.Argument(..., help="scenario TOML (batching 'none' or 'continuous' + recompute)"),
    out: Path | None = typer.Option(None, "--out", help="results directory (default: [output] dir + '-replay')"),
    seed: int | None = typer.Option(None, "--seed", help="override the scenario's seed"),
    executor: str = typer.Option("torch", "--executor", help="torch (run the steps on a GPU, wall clock), "
                                 "simulated (the cost model's step times: reproduces `run`) or logged (the step "
                                 "times of --steps, each step checked against it)"),
    steps_log: Path | None = typer.Option(None, "--steps", help="with --executor logged: the step log whose times "
                                          "the steps take (a replay's steps.parquet, with its scenario.toml)"),
    device: str = typer.Option("cuda", "--device", help="torch device: cuda, or cpu for a debug run"),
    target: str | None = typer.Option(None, "--target", help="target model shape (a `calibrate measure` name or "
                                      "NAME:hidden=..,...; default: the profile's target)"),
    draft: str | None = typer.Option(None, "--draft", help="draft model shape (default: the profile's draft)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress lines"),
    cpu: int | None = typer.Option(None, "--cpu", help="pin the replay to this CPU (its threads too): the host "
                                   "time per step then does not move with the OS's choice of core"),
    prefill_graphs: bool = typer.Option(True, "--prefill-graphs/--eager-prefill", help="run each prompt chunk "
                                        "from an empty cache as its bucket's CUDA graph (captured off the clock; "
                                        "the default), or eagerly, launch by launch"),
) -> None:
    """Run a scenario on a real speculative-decoding engine (PyTorch, random weights) in wall-clock time, with
    the simulator's decisions and acceptance draws; write `run`'s results plus steps.parquet (docs/replay.md)."""
    from rich.console import Console

    from lapsbench.config.scenario import load_scenario
    from lapsbench.replay.run import check_replayable, replay_scenario, write_replay
    from lapsbench.results.render import print_summary
    from lapsbench.results.writer import command_line

    spec = load_scenario(scenario)
    if seed is not None:
        if seed < 0:
            raise LapsbenchError(f"--seed: {seed} — expected an integer >= 0")
        spec = dataclasses.replace(spec, seed=seed)
    out_dir = out if out is not None else Path(f"{spec.out_dir}-replay")
    check_replayable(spec)
    if cpu is not None:
        from lapsbench.replay.run import pin_to_cpu

        pin_to_cpu(cpu)  # before torch starts its threads, which inherit it
    if executor not in ("torch", "simulated", "logged"):
        raise LapsbenchError(f"--executor: {executor!r} — expected 'torch', 'simulated' or 'logged'")
    if (steps_log is not None) != (executor == "logged"):
        raise LapsbenchError("--steps: goes with --executor logged (the step log whose times the steps take); "
                             f"got --executor {executor}{' and no --steps' if steps_log is None else ''}")
    if executor == "simulated":
        from lapsbench.engine.executor import SimulatedExecutor

        runner = SimulatedExecutor()
    elif executor == "logged":
        from lapsbench.calibrate.steplog import read_steplog
        from lapsbench.replay.logged import LoggedExecutor

        runner = LoggedExecutor(read_steplog(steps_log), steps_log)
        runner.check_runs([sc.label for sc in spec.scheduler], spec.replications)
    else:
        from lapsbench.replay.torch_engine import TorchExecutor
        from lapsbench.run.assembly import build_cost

        runner = TorchExecutor.for_scenario(build_cost(spec), target, draft, device, prefill_graphs)
    console = Console(stderr=True)

    def progress(label: str, replication: int, done: int, total: int) -> None:
        if done == total and not quiet:
            console.print(f"  {label} (rep {replication}) done", highlight=False)

    result, steps = replay_scenario(spec, runner, progress)
    summary = write_replay(out_dir, spec, result, steps, runner, command_line())
    print_summary(summary, f"{spec.name} (replay, {runner.name}): {result.workload.n} requests, "
                  f"k = {spec.speculation.k}")
    if not quiet:
        console.print(f"results in {out_dir}/ ({result.wall_s:.2f} s, {steps.height} steps)")
