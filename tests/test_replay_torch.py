"""The real engine (lapsbench/replay/torch_engine.py) with tiny shapes: on the CPU when torch is installed
(the `gpu` extra), on CUDA when a GPU is visible; skipped cleanly otherwise."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from lapsbench.config.scenario import parse_scenario
from lapsbench.engine.executor import SimulatedExecutor
from lapsbench.errors import LapsbenchError
from lapsbench.replay.run import replay_scenario
from lapsbench.replay.torch_engine import GRAPH_TOKENS, check_memory

from conftest import REPO

torch = pytest.importorskip("torch")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny_executor(device: str):
    from lapsbench.calibrate.models import parse_model_spec
    from lapsbench.replay.torch_engine import TorchExecutor

    return TorchExecutor(parse_model_spec("tiny-test"), parse_model_spec("tiny-test"), device)


def scenario(engine: dict, schedulers: list[str], n: int, rate_scale: float):
    return parse_scenario({
        "name": "replay-torch-test", "seed": 5,
        "trace": {"path": "traces/azure_conv_2023.parquet", "max_requests": n, "rate_scale": rate_scale},
        "model": {"profile": "h100-llama3-8b"},
        "speculation": {"k": 3, "acceptance": {"kind": "fixed", "alpha": 0.6}},
        "engine": engine,
        "scheduler": [{"name": name} for name in schedulers],
    }, base_dir=str(REPO))


def test_paged_decode_matches_a_prefill_of_the_whole_sequence(device: str = "cpu") -> None:
    """KV written in place through scattered blocks, then a verify of q tokens after it, predicts the same next
    token as one prefill of the whole sequence in other blocks: the paged cache and its masks are right."""
    from lapsbench.calibrate.models import MODELS
    from lapsbench.replay.torch_engine import PagedLlama

    torch.manual_seed(1)
    m = PagedLlama(MODELS["tiny-test"], torch.device(device), blocks=64, block_size=16, max_positions=512)
    ids = torch.randint(0, 256, (100,), device=device)
    a = torch.tensor([9, 3, 40, 17, 5, 22, 30, 11], device=device)   # scattered blocks of request A
    b = torch.tensor([50, 51, 52, 53, 54, 55, 56, 57], device=device)
    m.prefill(ids[:60], 0, a)            # A: 60 prompt tokens in two chunks' worth of blocks
    m.prefill(ids[60:95], 60, a)         # a chunk after 60 cached tokens
    table = torch.stack([a, torch.zeros_like(a)])  # a padding row beside it
    lens = torch.tensor([95, 0], device=device)
    verify = m.decode(torch.stack([ids[95:100], ids[95:100]]), lens, table)
    whole = m.prefill(ids[:100], 0, b)   # B: the same 100 tokens at once
    assert int(verify[0, -1]) == int(whole[0])
    first = m.prefill(ids[:96], 0, b)
    assert int(verify[0, 0]) == int(first[0])


@pytest.mark.parametrize("device", DEVICES)
def test_batch1_torch_replay_serves_the_simulated_steps(device: str) -> None:
    """Same decisions rule, real execution: every request takes exactly its simulated steps (batch 1: a request's
    steps do not depend on the schedule) and the step log times the wall clock."""
    s = scenario({"batching": "none"}, ["fcfs", "las"], n=6, rate_scale=50.0)
    sim = replay_scenario(s, SimulatedExecutor())[0].requests  # = run_scenario (test_replay.py), without numba
    real, steps = replay_scenario(s, tiny_executor(device))
    req = real.requests
    assert req["steps"].equals(sim["steps"]) and req["output_tokens"].equals(sim["output_tokens"])
    assert req["finish_s"].is_not_null().all() and (req["jct_s"] > 0).all()
    assert (steps["wall_ms"] > 0).all() and steps.height == int(sim["steps"].sum())
    assert steps["gpu_ms"].is_null().all() == (device == "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_continuous_torch_replay_with_chunked_prefill_and_recompute(device: str) -> None:
    s = scenario({"batching": "continuous", "max_batch": 4, "max_batch_tokens": 256, "kv_capacity_tokens": 4000,
                  "preemption": "recompute"}, ["fcfs", "las"], n=12, rate_scale=100.0)
    real, steps = replay_scenario(s, tiny_executor(device))
    req = real.requests
    assert req["finish_s"].is_not_null().all()
    assert steps["decode_requests"].max() == 4
    assert steps.filter(pl.col("prefill_context_tokens") > 0).height > 0  # chunked prefills ran
    assert steps["emitted_tokens"].sum() == 2 * int(req.filter(pl.col("scheduler") == "fcfs")["output_tokens"].sum())


def test_kv_need_beyond_gpu_memory_is_one_line() -> None:
    with pytest.raises(LapsbenchError, match="replay: the KV cache needs 1000000 tokens"):
        check_memory(1_000_000, 131072, 16 * 1024**3, 80 * 1024**3)
    check_memory(100_000, 131072, 16 * 1024**3, 80 * 1024**3)
    assert GRAPH_TOKENS % 16 == 0 and np.int64(GRAPH_TOKENS) > 0


def test_padded_prefill_writes_and_predicts_what_an_unpadded_one_does(monkeypatch) -> None:
    """A chunk padded to its bucket leaves the request's KV blocks and the predicted token exactly as an
    unpadded run of the same chunk does (the padding rows go last and into the scratch block 0)."""
    from lapsbench.calibrate.models import MODELS
    from lapsbench.replay import torch_engine
    from lapsbench.replay.torch_engine import PagedLlama

    def run(multiple: int):
        monkeypatch.setattr(torch_engine, "PREFILL_TOKENS", multiple)
        torch.manual_seed(1)
        m = PagedLlama(MODELS["tiny-test"], torch.device("cpu"), blocks=16, block_size=16, max_positions=512)
        ids = torch.randint(0, 256, (100,))
        blocks = torch.tensor([3, 7, 1, 12, 5, 9, 2])             # 112 tokens: less than 100 padded to 128
        first = m.prefill(ids[:37], 0, blocks)
        second = m.prefill(ids[37:100], 37, blocks)
        return int(first[0]), int(second[0]), m.k[0][blocks].clone(), m.k[0][0].clone()

    plain, padded = run(1), run(64)
    assert torch_engine.prefill_bucket(37) == 64 and torch_engine.prefill_bucket(63) == 64
    assert plain[:2] == padded[:2]
    assert torch.allclose(plain[2], padded[2], atol=1e-2)
    assert not torch.equal(plain[3], padded[3])   # the padding rows did write somewhere: the scratch block


def test_host_overhead_times_the_decode_step_on_every_cpu(tmp_path) -> None:
    """scripts/host_overhead.py (PIN=auto's CPU choice): one row per CPU this process may use, between two
    unpinned rows, each with a positive host time."""
    import csv
    import os
    import subprocess
    import sys

    out = tmp_path / "host.csv"
    r = subprocess.run([sys.executable, "scripts/host_overhead.py", "--out", str(out), "--steps", "5", "--device",
                        "cpu", "--target", "tiny-test", "--draft", "tiny-test", "--context", "300"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert [x["cpus"] for x in rows] == ["all", *map(str, sorted(os.sched_getaffinity(0))), "all"]
    assert all(float(x["host_ms_median"]) > 0 and float(x["host_ms_p90"]) >= float(x["host_ms_median"])
               for x in rows)


def test_a_prefill_with_a_tensor_length_is_the_int_one() -> None:
    """padded_prefill with the real length as a device tensor (a prefill graph's static input) writes the same
    KV and predicts the same token as with the length as an int."""
    from lapsbench.calibrate.models import MODELS
    from lapsbench.replay.torch_engine import PagedLlama, prefill_bucket

    def run(length):
        torch.manual_seed(1)
        m = PagedLlama(MODELS["tiny-test"], torch.device("cpu"), blocks=16, block_size=16, max_positions=512)
        ids = torch.randint(0, 256, (128,))
        blocks = torch.tensor([3, 7, 1, 12, 5, 9, 2, 4])
        token = m.padded_prefill(ids[: prefill_bucket(100)], 0, length, blocks)
        return int(token[0]), m.k[0][blocks].clone(), m.v[1][blocks].clone()

    a, b = run(100), run(torch.tensor([100]))
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


@pytest.mark.parametrize("device", DEVICES)
def test_prefill_graphs_run_what_the_eager_prefill_runs(device: str) -> None:
    """--prefill-graphs: each chunk from an empty cache goes through its bucket's static inputs (on the CPU the
    static path runs eagerly; on CUDA it is the captured graph) and leaves every request's KV as the eager
    prefill does, also with two chunks of one bucket in one step and a chunk after cached tokens (eager in
    both) beside them; the decode step after them reads the same caches."""
    from lapsbench.calibrate.models import parse_model_spec
    from lapsbench.engine.context import BatchStep
    from lapsbench.replay.torch_engine import TorchExecutor

    def step(prefill, chunk, cached, decode=(), context=()):
        ints = lambda v: np.array(v, np.int64)  # noqa: E731
        return BatchStep(k=3, decode=ints(decode), context=ints(context), emitted=ints([1] * len(decode)),
                         prefill=ints(prefill), chunk=ints(chunk), cached=ints(cached),
                         completes=np.ones(len(prefill), bool), resident=np.ones(3, bool))

    script = [step([0], [100], [0]),
              step([1, 2], [90, 70], [0, 0]),                          # two chunks of the 128-token bucket
              step([0], [60], [100], decode=[1, 2], context=[90, 70]),  # a chunk after cached tokens + decode
              step([], [], [], decode=[0, 1, 2], context=[160, 94, 74])]
    pools = []
    for graphs in (False, True):
        ex = TorchExecutor(parse_model_spec("tiny-test"), parse_model_spec("tiny-test"), device, prefill_graphs=graphs)
        ex.prepare(np.array([160, 90, 70]), np.array([20, 20, 20]), 3, np.inf, 4, 16)
        ex.reset_kv(3)
        for st in script:
            ex.execute(st)
        assert bool(ex.prefill_graph) == graphs
        pools.append([t[1:] for t in ex.target.k + ex.target.v + ex.draft.k + ex.draft.v])  # block 0: scratch
    assert all(torch.equal(a, b) for a, b in zip(*pools, strict=True))


@pytest.mark.parametrize("device", DEVICES)
def test_a_replay_with_prefill_graphs_serves_the_simulated_steps(device: str) -> None:
    """The replay loop with --prefill-graphs under continuous batching (chunked prefills: the first chunk as a
    graph, the rest eager): every request completes with its simulated output."""
    from lapsbench.calibrate.models import parse_model_spec
    from lapsbench.replay.torch_engine import TorchExecutor

    s = scenario({"batching": "continuous", "max_batch": 4, "max_batch_tokens": 256, "kv_capacity_tokens": 4000,
                  "preemption": "recompute"}, ["fcfs"], n=6, rate_scale=50.0)
    sim = replay_scenario(s, SimulatedExecutor())[0].requests
    ex = TorchExecutor(parse_model_spec("tiny-test"), parse_model_spec("tiny-test"), device, prefill_graphs=True)
    real = replay_scenario(s, ex)[0].requests
    assert real["finish_s"].is_not_null().all() and real["output_tokens"].equals(sim["output_tokens"])
    assert ex.prefill_graph and ex.meta()["prefill_graphs"] == len(ex.prefill_graph)


def test_prefill_graphs_are_captured_before_the_step_runs(monkeypatch) -> None:
    """A capture synchronizes the device: begun after some of a step's prefills were queued, it would take their
    GPU time off the clock with it (seen on the H200: steps that met a new bucket timed 40-250 ms short). So
    every new bucket of a step is captured before any of its work runs."""
    from lapsbench.calibrate.models import parse_model_spec
    from lapsbench.engine.context import BatchStep
    from lapsbench.replay.torch_engine import TorchExecutor

    ex = TorchExecutor(parse_model_spec("tiny-test"), parse_model_spec("tiny-test"), "cpu", prefill_graphs=True)
    ex.prepare(np.array([600, 600, 600]), np.array([5, 5, 5]), 3, np.inf, 4, 16)  # captures the 640 bucket
    ex.reset_kv(3)
    events = []
    capture, run = ex._capture_prefill, ex._padded_prefills
    monkeypatch.setattr(ex, "_capture_prefill", lambda cp: (events.append(("capture", cp)), capture(cp))[1])
    monkeypatch.setattr(ex, "_padded_prefills", lambda g: (events.append(("run", g.blocks.shape[0])), run(g))[1])
    ints = lambda v: np.array(v, np.int64)  # noqa: E731
    ex.execute(BatchStep(k=3, decode=ints([]), context=ints([]), emitted=ints([]), prefill=ints([0, 1, 2]),
                         chunk=ints([100, 200, 40]), cached=ints([0, 0, 0]), completes=np.ones(3, bool),
                         resident=np.ones(3, bool)))
    # chunks of new buckets (as a recompute's are): each captured (on the CPU: its static inputs made), then run
    assert events == [("capture", 128), ("capture", 256), ("capture", 64), ("run", 8), ("run", 16), ("run", 4)]
