"""`python -m lapsbench` runs the CLI."""

from lapsbench.cli import main

main()
