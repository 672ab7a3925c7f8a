"""`lapsbench trace ...` commands."""

import typer

app = typer.Typer(help="Create, import, slice and inspect canonical traces.", no_args_is_help=True)
