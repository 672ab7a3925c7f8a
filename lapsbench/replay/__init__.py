"""`lapsbench replay`: the simulator's decision loop driving a real speculative-decoding engine on a GPU.

The loop is the simulator's own (lapsbench.batching's one-step path; a batch-1 loop that mirrors
tests/reference_engine.py); only the clock differs. An executor runs each decided step and says when it
ended: `SimulatedExecutor` by the cost model's price (so a replay reproduces `run` exactly — the CPU test),
`TorchExecutor` (torch_engine.py) by running it on the GPU against the wall clock. See docs/replay.md."""
