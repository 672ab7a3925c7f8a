"""Running experiments: a scenario's run written as results, comparisons that simulate, and sweeps."""
