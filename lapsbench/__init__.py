"""lapsbench: trace-replay benchmark for scheduling speculative-decoding LLM requests."""

__version__ = "0.1.0"
