"""The real engine: a Llama-shaped target and draft (random bf16 weights) serving speculative decoding on a GPU.

Per step (lapsbench.engine.context.BatchStep): the prompt chunks of prefilling requests run first, one forward
of each model per request (flash attention, causal; a chunk after cached tokens attends them too), padded to
a multiple of PREFILL_TOKENS; a chunk from an empty cache runs as its bucket's CUDA graph (`prefill_graphs`,
the default; chunks after cached tokens run eagerly); every bucket of the workload's prompt lengths is warmed
(and captured) in `prepare`; then
every decoding request takes one speculative step as ONE CUDA graph: k draft forwards (one token each,
each fed the previous draft's argmax) and one target forward verifying k + 1 tokens per request. Which
tokens are accepted comes from the simulator's draws (the loop passes them), so only the KV lengths
follow them: a request's cache simply holds its prompt + generated tokens before each step.

KV: each model has a paged pool per layer, [blocks, block_size, kv_heads, head_dim], written in place;
a request holds blocks for its cached tokens + k + 1 (the simulator's footprint), block 0 is scratch for
padding rows. A decode graph is captured per (batch bucket, attention-span bucket): batches pad to a power
of two (≤ max_batch), spans to a multiple of GRAPH_TOKENS; attention gathers each request's blocks into a
padded span and masks it per request, so a batch's attention costs its longest member's span (no split-KV
kernel). Graph capture (a start-up cost of real engines) is kept off the replay clock.

The clock is the wall clock (perf_counter_ns) from the run's start; idle gaps before arrivals are waited
out (sleep, then spin). torch is imported lazily: it is the `gpu` extra."""

from __future__ import annotations

import gc
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from lapsbench.calibrate.measure import _Llama
from lapsbench.calibrate.models import LlamaConfig, parse_model_spec
from lapsbench.engine.context import BatchStep
from lapsbench.engine.executor import SimulatedExecutor
from lapsbench.engine.state import EngineState
from lapsbench.engine.steptable import NS
from lapsbench.errors import LapsbenchError
from lapsbench.models.cost import CostModel

GRAPH_TOKENS = 256             # attention spans are padded to a multiple of this (one decode graph per span)
PREFILL_TOKENS = 64            # prompt chunks are padded to a multiple of this (each bucket warmed off the clock)
RESERVE_BYTES = 12 * 1024**3   # GPU working memory beyond weights and KV: activations, graphs, gathered spans
GIB = 1024**3


def prefill_bucket(c: int) -> int:
    """The padded length a prompt chunk of c tokens runs at."""
    return -(-c // PREFILL_TOKENS) * PREFILL_TOKENS


def prefill_buckets(prompt: np.ndarray) -> list[int]:
    """The distinct padded lengths of the workload's prompts, ascending: the prefill shapes warmed in `prepare`.
    An eager prefill of a length the GPU has not run yet costs 10-55 ms more (per-shape kernel selection,
    allocator growth), so without this the first scheduler and every calibration window would run cold."""
    return sorted({prefill_bucket(int(c)) for c in np.unique(prompt)})


def import_torch() -> Any:
    """torch, or one line (exit 2) saying how to get it."""
    try:
        import torch
    except ImportError:
        raise LapsbenchError("replay: torch is not importable; install the GPU extra (pip install "
                             "'lapsbench[gpu]') on a machine with a CUDA GPU") from None
    return torch


def check_memory(pool_tokens: int, kv_bytes_per_token: int, weight_bytes: int, free_bytes: int) -> None:
    """One line (exit 2) when the KV pool, the weights and the working reserve do not fit the free GPU memory."""
    need = pool_tokens * kv_bytes_per_token + weight_bytes + RESERVE_BYTES
    if need > free_bytes:
        raise LapsbenchError(
            f"replay: the KV cache needs {pool_tokens} tokens × {kv_bytes_per_token} B = "
            f"{pool_tokens * kv_bytes_per_token / GIB:.1f} GiB, + weights {weight_bytes / GIB:.1f} GiB + "
            f"{RESERVE_BYTES / GIB:.0f} GiB working memory, more than the GPU's free {free_bytes / GIB:.1f} GiB; "
            "expected fewer requests (trace.max_requests) or a smaller engine.kv_capacity_tokens")


class PagedLlama:
    """A Llama decoder (calibrate.measure's random-weight layers) over a paged KV pool."""

    def __init__(self, cfg: LlamaConfig, device: Any, blocks: int, block_size: int, max_positions: int) -> None:
        torch = import_torch()
        self.torch, self.cfg, self.bs = torch, cfg, block_size
        self.net = _Llama(cfg, device, 0, max_positions)
        shape = (blocks, block_size, cfg.kv_heads, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=self.net.dtype) for _ in range(cfg.layers)]
        self.v = [torch.zeros(shape, device=device, dtype=self.net.dtype) for _ in range(cfg.layers)]

    def _mlp_and_residual(self, x: Any, o: Any, lw: dict) -> Any:
        F = self.torch.nn.functional
        x = x + F.linear(o, lw["o"])
        gu = F.linear(self.net._norm(x, lw["n2"]), lw["gu"])
        inter = self.cfg.intermediate
        return x + F.linear(F.silu(gu[:, :inter]) * gu[:, inter:], lw["down"])

    def decode(self, ids: Any, lens: Any, table: Any) -> Any:
        """B requests × q new tokens (ids [B, q]) at positions lens .. lens + q - 1; `table` [B, NB] holds each
        request's blocks. Writes the new K/V in place; returns the argmax token of every position [B, q]."""
        torch, net, cfg = self.torch, self.net, self.cfg
        F = torch.nn.functional
        B, q = ids.shape
        H, K, D = cfg.heads, cfg.kv_heads, cfg.head_dim
        g = H // K
        S = table.shape[1] * self.bs
        pos = lens[:, None] + torch.arange(q, device=ids.device)[None, :]
        blk, off = table.gather(1, pos // self.bs), pos % self.bs
        cos, sin = net.cos[pos][:, :, None, :], net.sin[pos][:, :, None, :]
        keys = torch.arange(S, device=ids.device)
        mask = (keys[None, None, :] <= pos[:, :, None]).repeat(1, g, 1)[:, None]  # [B, 1, g·q, S], causal
        x = F.embedding(ids.reshape(-1), net.embed)
        for li, lw in enumerate(net.layers):
            qkv = F.linear(net._norm(x, lw["n1"]), lw["qkv"]).view(B, q, H + 2 * K, D)
            qk = net._rope(qkv[:, :, : H + K], cos, sin)
            self.k[li][blk, off] = qk[:, :, H:]
            self.v[li][blk, off] = qkv[:, :, H + K:]
            kc = self.k[li][table].view(B, S, K, D).transpose(1, 2)
            vc = self.v[li][table].view(B, S, K, D).transpose(1, 2)
            # GQA packing: the g query heads sharing a KV head go along the query axis
            qp = qk[:, :, :H].reshape(B, q, K, g, D).permute(0, 2, 3, 1, 4).reshape(B, K, g * q, D)
            o = F.scaled_dot_product_attention(qp, kc, vc, attn_mask=mask)
            o = o.view(B, K, g, q, D).permute(0, 3, 1, 2, 4).reshape(B * q, H * D)
            x = self._mlp_and_residual(x, o, lw)
        logits = F.linear(net._norm(x, net.final_norm), net.lm_head)
        return logits.view(B, q, -1).argmax(-1)

    def prefill(self, ids: Any, start: int, blocks: Any) -> Any:
        """One request's prompt chunk (ids [c]) at positions start .. start + c - 1, after `start` cached
        tokens; `blocks` [nb] its block ids. The chunk runs padded to prefill_bucket(c) tokens (the padding
        rows come last, so causal attention keeps them out of the real rows, and write the scratch block 0).
        Returns the argmax token after the chunk's last real position."""
        c = ids.shape[0]
        cp = prefill_bucket(c)
        if cp > c:
            ids = self.torch.nn.functional.pad(ids, (0, cp - c))
        return self.padded_prefill(ids, start, c, blocks)

    def padded_prefill(self, ids: Any, start: int, c: int | Any, blocks: Any) -> Any:
        """`prefill` of a chunk already padded to its bucket (ids [cp]) whose first `c` tokens are real: `c` an
        int, or a device tensor [1] so that the shapes do not depend on it (a prefill graph's static input)."""
        torch, net, cfg = self.torch, self.net, self.cfg
        F = torch.nn.functional
        cp = ids.shape[0]
        H, K, D = cfg.heads, cfg.kv_heads, cfg.head_dim
        S = start + cp
        pos = torch.arange(start, S, device=ids.device)
        slot = (pos // self.bs).clamp(max=blocks.shape[0] - 1)
        blk, off = torch.where(pos < start + c, blocks[slot], 0), pos % self.bs
        cos, sin = net.cos[pos][None, :, None, :], net.sin[pos][None, :, None, :]
        mask = None
        if start:
            mask = torch.arange(S, device=ids.device)[None, :] <= pos[:, None]
        nb = -(-start // self.bs)
        x = F.embedding(ids, net.embed)
        for li, lw in enumerate(net.layers):
            qkv = F.linear(net._norm(x, lw["n1"]), lw["qkv"]).view(1, cp, H + 2 * K, D)
            qk = net._rope(qkv[:, :, : H + K], cos, sin)
            kn, vn = qk[0, :, H:], qkv[0, :, H + K:]
            self.k[li][blk, off] = kn
            self.v[li][blk, off] = vn
            if start:  # attend the cached tokens too
                kc = torch.cat([self.k[li][blocks[:nb]].view(nb * self.bs, K, D)[:start], kn])[None].transpose(1, 2)
                vc = torch.cat([self.v[li][blocks[:nb]].view(nb * self.bs, K, D)[:start], vn])[None].transpose(1, 2)
            else:
                kc, vc = kn[None].transpose(1, 2), vn[None].transpose(1, 2)
            if H != K:
                kc, vc = kc.repeat_interleave(H // K, 1), vc.repeat_interleave(H // K, 1)
            o = F.scaled_dot_product_attention(qk[:, :, :H].transpose(1, 2), kc, vc, attn_mask=mask,
                                               is_causal=not start)
            x = self._mlp_and_residual(x, o.transpose(1, 2).reshape(cp, H * D), lw)
        last = x[c - 1:c] if isinstance(c, int) else x.index_select(0, c - 1)
        return F.linear(net._norm(last, net.final_norm), net.lm_head).argmax(-1)


def _model(spec: str | None, fallback: str, what: str) -> tuple[str, LlamaConfig] | None:
    name = spec or fallback
    if not name:
        return None
    try:
        return parse_model_spec(name)
    except LapsbenchError as exc:
        raise LapsbenchError(f"--{what}: {exc}".replace("--model ", "")) from None


class TorchExecutor(SimulatedExecutor):
    """Runs each step on the GPU (or the CPU, for tests); the wall clock is the replay's clock."""

    name = "torch"

    def __init__(self, target: tuple[str, LlamaConfig], draft: tuple[str, LlamaConfig] | None,
                 device: str = "cuda", prefill_graphs: bool = True) -> None:
        super().__init__()
        torch = import_torch()
        if device == "cuda" and not torch.cuda.is_available():
            raise LapsbenchError("replay: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run on "
                                 "a machine with an NVIDIA GPU, or --device cpu for a debug run")
        if device not in ("cuda", "cpu"):
            raise LapsbenchError(f"--device: {device!r} is not a device; expected 'cuda' or 'cpu'")
        self.torch, self.device, self.cuda = torch, torch.device(device), device == "cuda"
        self.target_spec, self.draft_spec = target, draft
        self.graphs: dict[tuple[int, int], SimpleNamespace] = {}
        self.prefill_graphs = prefill_graphs  # a chunk from an empty cache runs as its bucket's graph
        self.prefill_graph: dict[int, SimpleNamespace] = {}
        self.capture_ns = 0
        self.compile_ns = self.compile_t = 0
        self.unit_ns = True
        self.t0, self.paused = time.perf_counter_ns(), 0

    @classmethod
    def for_scenario(cls, cost: CostModel, target: str | None, draft: str | None, device: str,
                     prefill_graphs: bool = True) -> TorchExecutor:
        """Model shapes from the options, else from the scenario's profile (its target and draft names)."""
        t = _model(target, cost.meta.get("target", ""), "target")
        if t is None:
            raise LapsbenchError(f"model.profile: {cost.name!r} names no target model; give --target "
                                 "(a `calibrate measure` model name or NAME:hidden=..,intermediate=..,...)")
        return cls(t, _model(draft, cost.meta.get("draft", ""), "draft"), device, prefill_graphs)

    # ------------------------------------------------------------------ set-up
    def prepare(self, prompt: np.ndarray, output: np.ndarray, k: int, kv_capacity_tokens: float,
                max_batch: int, block_size: int) -> None:
        """Size the KV pool for the workload (refusing what the GPU cannot hold), build the models, warm up."""
        torch = self.torch
        if k > 0 and self.draft_spec is None:
            raise LapsbenchError(f"speculation.k: {k} needs a draft model; the profile names none — give --draft")
        self.k, self.bs, self.max_batch = k, block_size, max_batch
        need = -(-(prompt + output + k + 1) // block_size) * block_size
        pool_tokens = int(min(kv_capacity_tokens, need.sum()))
        models = [self.target_spec] + ([self.draft_spec] if k > 0 else [])
        per_token = sum(cfg.kv_bytes_per_token for _, cfg in models)
        if self.cuda:
            free, _ = torch.cuda.mem_get_info()
            check_memory(pool_tokens, per_token, sum(cfg.weight_bytes for _, cfg in models), free)
        blocks = pool_tokens // block_size + 1  # + the scratch block 0
        # + a span bucket of padding; at least the warm-up's chunk after GRAPH_TOKENS cached tokens
        max_pos = max(int((prompt + output).max()) + k + 1 + GRAPH_TOKENS, 2 * GRAPH_TOKENS)
        torch.manual_seed(0)
        self.target = PagedLlama(self.target_spec[1], self.device, blocks, block_size, max_pos)
        self.draft = PagedLlama(self.draft_spec[1], self.device, blocks, block_size, max_pos) if k > 0 else None
        self.pool_blocks = blocks
        self.ids = torch.randint(0, min(cfg.vocab for _, cfg in models), (max_pos,), device=self.device)
        self.graph_pool = torch.cuda.graph_pool_handle() if self.cuda else None
        self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if self.cuda \
            else None
        # warm-up, off the clock: every prefill bucket of the workload from scratch, and one chunk after cached
        # tokens, into the scratch block 0 (kernels, cuBLAS heuristics and handles, allocator segments)
        self.warm_buckets = prefill_buckets(prompt)
        scratch = torch.zeros(-(-(GRAPH_TOKENS + self.warm_buckets[-1]) // block_size), dtype=torch.long,
                              device=self.device)
        t = time.perf_counter_ns()
        with torch.inference_mode(), self._attention():
            for model in [self.target] + ([self.draft] if k > 0 else []):
                for cp in self.warm_buckets:
                    model.prefill(self.ids[:cp], 0, scratch)
                model.prefill(self.ids[:GRAPH_TOKENS], GRAPH_TOKENS, scratch)
        self._sync()
        self.warm_ns = time.perf_counter_ns() - t
        self.pool_tokens = pool_tokens
        if self.prefill_graphs:
            for cp in self.warm_buckets:
                self._capture_prefill(cp)

    def begin(self, state: EngineState, label: str, replication: int, unit_ns: bool) -> None:
        super().begin(state, label, replication, unit_ns)
        self.unit_ns = unit_ns
        self.reset_kv(state.n)
        self._sync()
        gc.collect()  # the previous run's garbage (collections are off on the clock: run.collector_paused)
        gc.freeze()  # what exists now (models, graphs, the workload) is never scanned by a later collection
        self.t0, self.paused = time.perf_counter_ns(), 0

    def reset_kv(self, n: int) -> None:
        """Every KV block free, for n requests none held (each scheduler's run starts so; the timing scripts too)."""
        self.free = list(range(self.pool_blocks - 1, 0, -1))
        self.blocks: list[list[int]] = [[] for _ in range(n)]
        self.holding = np.zeros(n, bool)

    def meta(self) -> dict:
        torch = self.torch
        (tname, tcfg), draft = self.target_spec, self.draft_spec
        return {
            "executor": self.name, "device": str(self.device),
            "gpu": torch.cuda.get_device_name(0) if self.cuda else "cpu",
            "torch": torch.__version__, "cuda": getattr(torch.version, "cuda", None),
            "target": tname, "target_shape": tcfg.to_dict(),
            "draft": draft[0] if draft else None, "draft_shape": draft[1].to_dict() if draft else None,
            "kv_pool_tokens": self.pool_tokens, "block_size": self.bs, "graph_tokens": GRAPH_TOKENS,
            "decode_graphs": len(self.graphs), "graph_capture_s": round(self.capture_ns / NS, 3),
            "numba_compile_s": round(self.compile_ns / NS, 3),
            "prefill_tokens_multiple": PREFILL_TOKENS, "prefill_buckets_warmed": len(self.warm_buckets),
            "prefill_warm_s": round(self.warm_ns / NS, 3),
            "prefill_graphs": len(self.prefill_graph) if self.prefill_graphs else None,
        }

    # ------------------------------------------------------------------ clock
    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def _now(self) -> float:
        ns = time.perf_counter_ns() - self.t0 - self.paused
        return ns if self.unit_ns else ns / NS

    def clock(self, start: float, price: float) -> tuple[float, float]:
        end = self._now()
        return end, end - start

    def wait_until(self, t: float) -> float:
        while True:
            now = self._now()
            left_s = (t - now) * (1.0 / NS if self.unit_ns else 1.0)
            if left_s <= 0:
                return now
            if left_s > 0.002:
                time.sleep(left_s - 0.001)

    # ------------------------------------------------------------------ KV blocks
    def _free_kv(self, i: int) -> None:
        self.free.extend(self.blocks[i])
        self.blocks[i] = []
        self.holding[i] = False

    def _reserve(self, i: int, tokens: int) -> None:
        have = self.blocks[i]
        need = -(-tokens // self.bs) - len(have)
        if need > len(self.free):
            raise RuntimeError(f"KV pool exhausted: request {i} needs {need} blocks, {len(self.free)} free")
        for _ in range(need):
            have.append(self.free.pop())
        self.holding[i] = True

    # ------------------------------------------------------------------ steps
    def execute(self, step: BatchStep) -> float | None:
        torch, k = self.torch, self.k
        for i in np.flatnonzero(self.holding & ~step.resident).tolist():
            self._free_kv(i)
        prefills, owners = [], []
        for i, c, cached in zip(step.prefill.tolist(), step.chunk.tolist(), step.cached.tolist(), strict=True):
            if cached == 0:  # a new prefill (or a recompute after eviction) starts from an empty cache
                self._free_kv(i)
            self._reserve(i, cached + c + k + 1)
            if self.prefill_graphs and cached == 0:
                prefills.append((c, cached, None))  # its graph's inputs are filled just before it runs
            else:
                prefills.append((c, cached, torch.tensor(self.blocks[i], dtype=torch.long).to(self.device)))
            owners.append(i)
        graph = self._decode_inputs(step) if step.decode.size else None
        # capture first: a capture synchronizes the device, so one begun after this step's work was queued
        # would take that work's GPU time off the clock with it
        for c, _, blocks in prefills:
            if blocks is None and prefill_bucket(c) not in self.prefill_graph:
                self._capture_prefill(prefill_bucket(c))
        with torch.inference_mode(), self._attention():
            if self.cuda:
                self.events[0].record()
            for i, (c, cached, blocks) in zip(owners, prefills, strict=True):
                if blocks is None:
                    self._graph_prefill(c, self.blocks[i])
                    continue
                self.target.prefill(self.ids[:c], cached, blocks)
                if self.draft is not None:
                    self.draft.prefill(self.ids[:c], cached, blocks)
            if graph is not None:
                if self.cuda:
                    graph.graph.replay()
                else:
                    self._speculate(graph)
            if not self.cuda:
                return None
            self.events[1].record()
        self.events[1].synchronize()
        return self.events[0].elapsed_time(self.events[1])

    def _attention(self) -> Any:
        """SDPA on the flash or memory-efficient kernels (math on the CPU): not cuDNN's, which builds a plan
        per new shape (~0.1 s each, seen on the H200) — every prompt length would pay it."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    def _bucket(self, n: int) -> int:
        b = 1
        while b < n:
            b *= 2
        return min(b, self.max_batch)

    def _decode_inputs(self, step: BatchStep) -> SimpleNamespace:
        """Reserve the decoders' blocks, pick (or capture) their graph and fill its static inputs."""
        k = self.k
        n = step.decode.size
        for i, ctx in zip(step.decode.tolist(), step.context.tolist(), strict=True):
            self._reserve(i, ctx + k + 1)
        span_blocks = GRAPH_TOKENS // self.bs
        nb = -(-(int(step.context.max()) + k + 1) // self.bs)
        key = (self._bucket(n), -(-nb // span_blocks) * span_blocks)
        graph = self.graphs.get(key) or self._capture(*key)
        staged = graph.staged_np  # the previous step's copy out of it is done: execute ended on a sync
        table, lens = staged[: key[0] * key[1]].reshape(key), staged[key[0] * key[1]:]
        table.fill(0)
        for r, i in enumerate(step.decode.tolist()):
            row = self.blocks[i]
            table[r, : len(row)] = row
        lens.fill(0)
        lens[:n] = step.context
        graph.inputs.copy_(graph.staged, non_blocking=True)  # one DMA, queued ahead of the graph: no host wait
        return graph

    def _speculate(self, g: SimpleNamespace) -> Any:
        """One SD step over the static inputs: k draft forwards, then the target verifies k + 1 tokens."""
        tokens = [g.ids[:, None]]
        for j in range(self.k):
            tokens.append(self.draft.decode(tokens[-1], g.lens + j, g.table))
        return self.target.decode(self.torch.cat(tokens, 1), g.lens, g.table)

    def _capture(self, batch: int, blocks: int) -> SimpleNamespace:
        """Static inputs for a (batch, span) bucket and, on CUDA, the graph of its SD step (off the clock)."""
        torch = self.torch
        t = time.perf_counter_ns()
        # the block table and the lengths: one device buffer, filled from one pinned host buffer per step
        inputs = torch.zeros(batch * blocks + batch, dtype=torch.long, device=self.device)
        staged = torch.zeros(inputs.shape, dtype=torch.long, pin_memory=self.cuda)
        g = SimpleNamespace(ids=self.ids[:batch].clone(), inputs=inputs, table=inputs[: batch * blocks].view(
            batch, blocks), lens=inputs[batch * blocks:], staged=staged, staged_np=staged.numpy(), graph=None)
        g.graph = self._graph_of(lambda: self._speculate(g))
        self.graphs[(batch, blocks)] = g
        self._off_clock(t)
        return g

    def _graph_prefill(self, c: int, blocks: list[int]) -> None:
        """A chunk of c tokens from an empty cache, as its bucket's graph: its blocks and length are copied into
        the graph's static inputs first (a blocking copy, in stream order: two chunks of one bucket in a step
        each see their own)."""
        g = self.prefill_graph[prefill_bucket(c)]  # captured before the step began (execute)
        nb = g.blocks.shape[0]
        staged = np.zeros(nb + 1, np.int64)
        mine = blocks[:nb]
        staged[: len(mine)], staged[nb] = mine, c
        g.inputs.copy_(self.torch.from_numpy(staged))
        if g.graph is not None:
            g.graph.replay()
        else:
            self._padded_prefills(g)

    def _padded_prefills(self, g: SimpleNamespace) -> None:
        for model in [self.target] + ([self.draft] if self.draft is not None else []):
            model.padded_prefill(self.ids[: g.blocks.shape[0] * self.bs], 0, g.length, g.blocks)

    def _capture_prefill(self, cp: int) -> SimpleNamespace:
        """Static inputs (block ids, real length) for a prefill bucket of cp tokens and, on CUDA, the graph of
        both models' prefill from an empty cache (off the clock). The inputs start at the scratch block 0."""
        torch = self.torch
        t = time.perf_counter_ns()
        nb = cp // self.bs
        inputs = torch.zeros(nb + 1, dtype=torch.long, device=self.device)
        inputs[nb] = cp
        g = SimpleNamespace(inputs=inputs, blocks=inputs[:nb], length=inputs[nb:], graph=None)
        g.graph = self._graph_of(lambda: self._padded_prefills(g))
        self.prefill_graph[cp] = g
        self._off_clock(t)
        return g

    def _graph_of(self, work: Any) -> Any:
        """On CUDA, `work` (over static inputs) captured as a graph into the shared pool, after one warm-up run
        on a side stream, and launched once: a graph's first launch uploads it (0.4-6 ms of host time seen on
        the H200), which is not a step's cost. None on the CPU, where `work` runs eagerly instead."""
        torch = self.torch
        if not self.cuda:
            return None
        with torch.inference_mode(), self._attention():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                work()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.graph_pool):
                work()
            graph.replay()
        torch.cuda.synchronize()
        return graph

    def _off_clock(self, since_ns: int) -> None:
        """Graph capture since `since_ns` is a start-up cost: take it off the replay's clock."""
        took = time.perf_counter_ns() - since_ns
        self.paused += took
        self.capture_ns += took

    def compiling(self, started: bool) -> None:
        """numba compiling a scheduler's decision on first use (the machine's cache is cold), or loading it from
        its cache (warm: 4-9 ms at each scheduler's first decode step, seen on the H200), is off the clock."""
        if started:
            self.compile_t = time.perf_counter_ns()
        else:
            took = time.perf_counter_ns() - self.compile_t
            self.paused += took
            self.compile_ns += took
