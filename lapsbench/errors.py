"""One error type for bad input: the CLI prints its message on one line and exits 2."""


class LapsbenchError(Exception):
    """Bad input (file, field, column or value). The message names what is wrong and what is expected."""

    exit_code = 2
