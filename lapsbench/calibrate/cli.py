"""`lapsbench calibrate ...` commands."""

import typer

app = typer.Typer(help="Measure, fit and check per-GPU cost profiles.", no_args_is_help=True)
