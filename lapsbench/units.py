"""Time units shared by every layer."""

NS = 1_000_000_000  # the engines' integer clock: nanoseconds per second
