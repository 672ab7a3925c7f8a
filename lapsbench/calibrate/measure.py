"""Measure forward times of Llama-shaped decoders on a GPU, in the calibration schema.

Runs standalone with only torch + numpy-free stdlib (`python -m lapsbench.calibrate.measure ...`), so it can
be carried to a GPU machine that has torch but not polars/typer; the `lapsbench calibrate measure` command
calls the same `measure()`.

What is timed, per configuration (phase, batch, query_tokens, context):
  one forward of a Llama decoder with random bf16 weights (time depends on shapes, not values): embedding,
  per layer RMSNorm → fused QKV projection → rotary → in-place write of the new K/V into a preallocated
  cache → SDPA attention over the cached + new tokens → O projection → RMSNorm → fused gate/up → SwiGLU →
  down projection, then final norm and LM head (all query tokens in `decode`, the last token of each request
  in `prefill`, as serving engines do). The forward is captured once in a CUDA graph and replayed many
  times; each replay is timed with CUDA events, the L2 cache flushed outside the timed region before each
  replay (in serving, draft and target forwards alternate, so weights are not L2-resident).

Attention details: decode/verify packs the query heads that share a KV head along the sequence dimension
(FlashDecoding-style GQA packing), so SDPA runs without a mask on the flash kernel; the causal triangle
among the ≤ 8 new tokens is not masked (it changes attention work by < q/(c+q) and is below timing noise).
Prefill with no cached context is causal; a chunked prefill (context > 0) attends all cached + chunk
tokens without a mask (an upper bound on attention work of at most chunk/(2·(context+chunk))).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lapsbench.calibrate.models import LlamaConfig, parse_model_spec
from lapsbench.errors import LapsbenchError
from lapsbench.fsutil import atomic_file

COLUMNS = ("gpu", "model", "phase", "batch", "query_tokens", "context", "ms_median", "ms_p10", "ms_p90",
           "reps", "attn_backend")


@dataclass
class Grid:
    """Which configurations to time. Configurations whose KV or activations don't fit are skipped."""

    batches: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    query_tokens: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 8])
    draft_query_tokens: list[int] = field(default_factory=lambda: [1])
    contexts: list[int] = field(default_factory=lambda: [128, 512, 1024, 2048, 4096, 8192])
    prefill_lengths: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024, 2048, 4096, 8192])
    prefill_batches: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    prefill_max_tokens: int = 16384
    chunk_lengths: list[int] = field(default_factory=lambda: [256, 512, 2048])
    chunk_contexts: list[int] = field(default_factory=lambda: [1024, 4096])
    kv_budget_gb: float = 0.0  # 0 = from free GPU memory
    target_time_s: float = 0.25  # timed replays per configuration: about this much GPU time
    min_reps: int = 10
    max_reps: int = 60


def _is_draft(cfg: LlamaConfig) -> bool:
    return cfg.params < 2_000_000_000


def configurations(cfg: LlamaConfig, grid: Grid, kv_tokens: int) -> list[tuple[str, int, int, int]]:
    """(phase, batch, query_tokens, context) rows to time, within `kv_tokens` of cache."""
    rows: list[tuple[str, int, int, int]] = []
    qs = grid.draft_query_tokens if _is_draft(cfg) else grid.query_tokens
    for b in grid.batches:
        for q in qs:
            for c in grid.contexts:
                if b * (c + q) <= kv_tokens:
                    rows.append(("decode", b, q, c))
    for p in grid.prefill_lengths:
        for b in grid.prefill_batches:
            if b * p <= grid.prefill_max_tokens and b * p <= kv_tokens:
                rows.append(("prefill", b, p, 0))
    for p in grid.chunk_lengths:
        for c in grid.chunk_contexts:
            if p + c <= kv_tokens:
                rows.append(("prefill", 1, p, c))
    return rows


class _Llama:
    """A Llama decoder with random weights and a preallocated contiguous KV cache of `kv_tokens` tokens."""

    def __init__(self, cfg: LlamaConfig, device: Any, kv_tokens: int, max_positions: int) -> None:
        import torch

        self.torch = torch
        self.cfg = cfg
        self.device = device
        dt = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.dtype = dt
        self.backend_cache: dict[tuple[bool, bool], tuple[str, Any]] = {}
        h, d, L = cfg.hidden, cfg.head_dim, cfg.layers

        def w(*shape: int) -> Any:
            return (torch.randn(*shape, device=device, dtype=dt) * 0.02)

        self.embed = w(cfg.vocab, h)
        self.lm_head = w(cfg.vocab, h)
        self.final_norm = torch.ones(h, device=device, dtype=dt)
        qkv_out = (cfg.heads + 2 * cfg.kv_heads) * d
        self.layers = [
            dict(n1=torch.ones(h, device=device, dtype=dt), qkv=w(qkv_out, h), o=w(h, cfg.heads * d),
                 n2=torch.ones(h, device=device, dtype=dt), gu=w(2 * cfg.intermediate, h),
                 down=w(h, cfg.intermediate))
            for _ in range(L)
        ]
        per_layer = kv_tokens * cfg.kv_heads * d
        self.k_cache = [torch.randn(per_layer, device=device, dtype=dt) for _ in range(L)]
        self.v_cache = [torch.randn(per_layer, device=device, dtype=dt) for _ in range(L)]
        pos = torch.arange(max_positions, device=device, dtype=torch.float32)
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        ang = torch.outer(pos, inv)
        self.cos = torch.cat([ang.cos(), ang.cos()], -1).to(dt)
        self.sin = torch.cat([ang.sin(), ang.sin()], -1).to(dt)

    def _norm(self, x: Any, w: Any) -> Any:
        F = self.torch.nn.functional
        if hasattr(F, "rms_norm"):
            return F.rms_norm(x, (x.shape[-1],), w, 1e-5)
        return x * self.torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5).to(x.dtype) * w

    def _rope(self, x: Any, cos: Any, sin: Any) -> Any:
        half = x.shape[-1] // 2
        rot = self.torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    def make_inputs(self, batch: int, q: int, context: int) -> dict[str, Any]:
        torch = self.torch
        ids = torch.randint(0, self.cfg.vocab, (batch * q,), device=self.device)
        pos = torch.arange(context, context + q, device=self.device)
        return dict(ids=ids, cos=self.cos[pos][None, :, None, :], sin=self.sin[pos][None, :, None, :])

    def forward(self, inputs: dict[str, Any], batch: int, q: int, context: int, prefill: bool,
                backend: Any) -> Any:
        """One forward; `backend` is the SDPA backend list chosen by `probe_backend` (None = default)."""
        torch = self.torch
        F = torch.nn.functional
        cfg = self.cfg
        H, K, D = cfg.heads, cfg.kv_heads, cfg.head_dim
        g = H // K
        S = context + q
        N = batch * q
        x = F.embedding(inputs["ids"], self.embed)
        for li, lw in enumerate(self.layers):
            hcur = self._norm(x, lw["n1"])
            qkv = F.linear(hcur, lw["qkv"]).view(batch, q, H + 2 * K, D)
            qk = self._rope(qkv[:, :, : H + K], inputs["cos"], inputs["sin"])
            qh, kn = qk[:, :, :H], qk[:, :, H:]
            vn = qkv[:, :, H + K:]
            kc = self.k_cache[li][: batch * K * S * D].view(batch, K, S, D)
            vc = self.v_cache[li][: batch * K * S * D].view(batch, K, S, D)
            kc[:, :, context:].copy_(kn.transpose(1, 2))
            vc[:, :, context:].copy_(vn.transpose(1, 2))
            o = self._attention(qh, kc, vc, batch, q, context, prefill, g, backend)
            x = x + F.linear(o.reshape(N, H * D), lw["o"])
            hcur = self._norm(x, lw["n2"])
            gu = F.linear(hcur, lw["gu"])
            a = F.silu(gu[:, : cfg.intermediate]) * gu[:, cfg.intermediate:]
            x = x + F.linear(a, lw["down"])
        if prefill:
            x = x.view(batch, q, -1)[:, -1]
        return F.linear(self._norm(x, self.final_norm), self.lm_head)

    def _attention(self, qh: Any, kc: Any, vc: Any, batch: int, q: int, context: int, prefill: bool, g: int,
                   backend: Any) -> Any:
        torch = self.torch
        F = torch.nn.functional
        K, D = self.cfg.kv_heads, self.cfg.head_dim

        def sdpa(*args: Any, **kw: Any) -> Any:
            if backend is None:
                return F.scaled_dot_product_attention(*args, **kw)
            from torch.nn.attention import sdpa_kernel

            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(*args, **kw)

        if not prefill:
            # GQA packing: [B, q, K, g, D] → [B, K, g·q, D]; no mask (see module docstring).
            qp = qh.reshape(batch, q, K, g, D).permute(0, 2, 3, 1, 4).reshape(batch, K, g * q, D)
            o = sdpa(qp, kc, vc)
            return o.view(batch, K, g, q, D).permute(0, 3, 1, 2, 4)
        qt = qh.transpose(1, 2)
        kw: dict[str, Any] = {"is_causal": context == 0}
        if g > 1:
            kw["enable_gqa"] = True
        return sdpa(qt, kc, vc, **kw).transpose(1, 2)


def _backends(torch: Any) -> list[tuple[str, Any]]:
    try:
        from torch.nn.attention import SDPBackend
    except ImportError:  # very old torch: let SDPA choose
        return [("default", None)]
    return [("flash", [SDPBackend.FLASH_ATTENTION]), ("efficient", [SDPBackend.EFFICIENT_ATTENTION]),
            ("cudnn", [SDPBackend.CUDNN_ATTENTION]), ("math", [SDPBackend.MATH])]


def probe_backend(model: _Llama, batch: int, q: int, context: int, prefill: bool) -> tuple[str, Any]:
    """The fastest-ranked SDPA backend that accepts this attention shape (flash first)."""
    torch = model.torch
    if model.device.type != "cuda":
        return "default", None
    key = (prefill, context == 0)
    if key in model.backend_cache:
        return model.backend_cache[key]
    inputs = model.make_inputs(batch, q, context)
    for name, be in _backends(torch):
        try:
            model.forward(inputs, batch, q, context, prefill, be)
            torch.cuda.synchronize()
            model.backend_cache[key] = (name, be)
            return name, be
        except RuntimeError:
            continue
    raise RuntimeError(f"no SDPA backend for batch={batch} q={q} context={context} prefill={prefill}")


def _percentile(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def time_config(model: _Llama, phase: str, batch: int, q: int, context: int, grid: Grid,
                flush: Any) -> dict[str, Any]:
    """Median/p10/p90 ms of one forward, CUDA-graph replays timed with events (CPU: wall clock)."""
    torch = model.torch
    prefill = phase == "prefill"
    backend_name, backend = probe_backend(model, batch, q, context, prefill)
    inputs = model.make_inputs(batch, q, context)
    times: list[float] = []
    if model.device.type == "cuda":
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                model.forward(inputs, batch, q, context, prefill, backend)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model.forward(inputs, batch, q, context, prefill, backend)
        graph.replay()
        torch.cuda.synchronize()
        # Estimate one replay to size the number of timed replays.
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        torch.cuda.synchronize()
        est = max(e0.elapsed_time(e1), 1e-3) / 1000.0
        floor = grid.min_reps if est < 0.05 else max(3, grid.min_reps // 2)  # long prefills: fewer replays
        reps = int(min(grid.max_reps, max(floor, grid.target_time_s / est)))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            flush.zero_()
            starts[i].record()
            graph.replay()
            ends[i].record()
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) for a, b in zip(starts, ends, strict=True)]
        del graph
    else:
        with torch.no_grad():
            model.forward(inputs, batch, q, context, prefill, backend)
            for _ in range(grid.min_reps):
                t0 = time.perf_counter()
                model.forward(inputs, batch, q, context, prefill, backend)
                times.append((time.perf_counter() - t0) * 1000.0)
    return dict(phase=phase, batch=batch, query_tokens=q, context=context,
                ms_median=round(statistics.median(times), 5), ms_p10=round(_percentile(times, 0.1), 5),
                ms_p90=round(_percentile(times, 0.9), 5), reps=len(times), attn_backend=backend_name)


def host_link_gb_s(torch: Any, nbytes: int = 1 << 30) -> float:
    """Pinned host<->device copy bandwidth (mean of both directions), the cost basis of swap preemption."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    rates = []
    for src, dst in ((host, dev), (dev, host)):
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(3):
            dst.copy_(src, non_blocking=True)
        e1.record()
        torch.cuda.synchronize()
        rates.append(3 * nbytes / (e0.elapsed_time(e1) / 1000.0) / 1e9)
    del host, dev
    return round(sum(rates) / len(rates), 2)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_file(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in COLUMNS})


def import_torch() -> Any:
    """torch, or a one-line LapsbenchError (exit 2) saying how to get it."""
    try:
        import torch
    except ImportError:
        raise LapsbenchError("calibrate measure: torch is not importable; install the GPU extra "
                             "(pip install 'lapsbench[gpu]') on a machine with a CUDA GPU") from None
    return torch


def measure(models: list[tuple[str, LlamaConfig]], out: Path, grid: Grid, device: str = "cuda",
            deadline_s: float = 0.0, command: str = "", log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time every model over the grid; write `out` (CSV, rewritten after each model) and `out`.json
    (provenance). `deadline_s` > 0 stops starting new configurations after that many seconds."""
    torch = import_torch()
    if device == "cuda":
        if not torch.cuda.is_available():
            raise LapsbenchError("calibrate measure: no CUDA GPU visible to torch (torch.cuda.is_available() is "
                                 "False); run on a machine with an NVIDIA GPU, or --device cpu for a debug run")
        dev = torch.device("cuda")
        gpu_name = torch.cuda.get_device_name(0)
        total_mem = torch.cuda.get_device_properties(0).total_memory
    elif device == "cpu":
        dev = torch.device("cpu")
        gpu_name = f"cpu-{platform.machine()}"
        total_mem = 0
    else:
        raise LapsbenchError(f"--device: {device!r} is not a device; expected 'cuda' or 'cpu'")
    t_start = time.monotonic()
    meta: dict[str, Any] = {
        "tool": "lapsbench calibrate measure", "gpu": gpu_name, "gpu_memory_bytes": total_mem,
        "torch": torch.__version__, "cuda": getattr(torch.version, "cuda", None),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join(shlex.quote(a) for a in sys.argv), "host": platform.node(),
        "models": {name: cfg.to_dict() for name, cfg in models}, "grid": grid.__dict__, "skipped": [],
    }
    if device == "cuda":
        meta["host_link_gb_s"] = host_link_gb_s(torch)
        log(f"{gpu_name}: host<->device copy {meta['host_link_gb_s']} GB/s (pinned, 1 GiB)")
    rows: list[dict[str, Any]] = []
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.float32, device=dev) if device == "cuda" else None
    oom_error = torch.cuda.OutOfMemoryError if device == "cuda" else MemoryError
    for name, cfg in models:
        if device == "cuda":
            torch.cuda.empty_cache()
            free, _ = torch.cuda.mem_get_info()
            act_reserve = 12 * 1024**3
            kv_bytes = (grid.kv_budget_gb * 1024**3 if grid.kv_budget_gb > 0
                        else free - cfg.weight_bytes - act_reserve)
            kv_tokens = int(max(kv_bytes, 0) // cfg.kv_bytes_per_token)
        else:
            kv_tokens = int(grid.kv_budget_gb * 1024**3 // cfg.kv_bytes_per_token) if grid.kv_budget_gb else 65536
        configs = configurations(cfg, grid, kv_tokens)
        log(f"[{name}] {cfg.params / 1e9:.3f} B params, KV cache {kv_tokens} tokens, {len(configs)} configurations")
        max_pos = max([c + q for _, _, q, c in configs] + [1])
        model = _Llama(cfg, dev, kv_tokens, max_pos)
        t_model = time.monotonic()
        for i, (phase, b, q, c) in enumerate(configs):
            if deadline_s and time.monotonic() - t_start > deadline_s:
                meta["skipped"].append({"model": name, "phase": phase, "batch": b, "query_tokens": q, "context": c})
                continue
            try:
                r = time_config(model, phase, b, q, c, grid, flush)
            except oom_error:
                meta["skipped"].append({"model": name, "phase": phase, "batch": b, "query_tokens": q,
                                        "context": c, "why": "out of memory"})
                torch.cuda.empty_cache()
                continue
            r.update(gpu=gpu_name, model=name)
            rows.append(r)
            if i % 20 == 0 or i == len(configs) - 1:
                log(f"  [{name}] {i + 1}/{len(configs)} {phase} b={b} q={q} c={c}: {r['ms_median']:.3f} ms "
                    f"({r['attn_backend']}, {time.monotonic() - t_model:.0f}s)")
        del model
        meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
        _write_csv(out, rows)
        with atomic_file(Path(f"{out}.json")) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
        log(f"[{name}] done in {time.monotonic() - t_model:.0f}s; {len(rows)} rows in {out}")
    return rows


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LapsbenchError(f"grid option: {text!r} is not a comma-separated list of integers") from None
    if not vals or any(v < 0 for v in vals):
        raise LapsbenchError(f"grid option: {text!r} must list non-negative integers")
    return vals


def grid_from_options(opts: dict[str, Any]) -> Grid:
    """A Grid from option strings (None = default)."""
    g = Grid()
    for key in ("batches", "query_tokens", "draft_query_tokens", "contexts", "prefill_lengths", "prefill_batches",
                "chunk_lengths", "chunk_contexts"):
        if opts.get(key):
            setattr(g, key, _ints(opts[key]))
    for key in ("kv_budget_gb", "target_time_s"):
        if opts.get(key) is not None:
            setattr(g, key, float(opts[key]))
    for key in ("min_reps", "max_reps", "prefill_max_tokens"):
        if opts.get(key) is not None:
            setattr(g, key, int(opts[key]))
    return g


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (no typer/polars needed)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--deadline-s", type=float, default=0.0)
    for key in ("batches", "query_tokens", "draft_query_tokens", "contexts", "prefill_lengths", "prefill_batches",
                "chunk_lengths", "chunk_contexts", "kv_budget_gb", "target_time_s", "min_reps", "max_reps",
                "prefill_max_tokens"):
        ap.add_argument("--" + key.replace("_", "-"), dest=key, default=None)
    a = ap.parse_args(argv)
    try:
        models = [parse_model_spec(m) for m in a.model]
        grid = grid_from_options(vars(a))
        measure(models, Path(a.out), grid, device=a.device, deadline_s=a.deadline_s,
                command="python -m lapsbench.calibrate.measure "
                + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
                log=lambda s: print(s, flush=True))
    except LapsbenchError as exc:
        print(f"lapsbench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
