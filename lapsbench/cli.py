"""The `lapsbench` command line: parse, call, render, and map bad input to one line and exit code 2."""

from __future__ import annotations

import sys

import typer

from lapsbench.calibrate.cli import app as calibrate_app
from lapsbench.errors import LapsbenchError
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


def main() -> None:
    """Console entry point: LapsbenchError becomes `lapsbench: <message>` on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
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
