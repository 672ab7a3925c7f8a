"""Llama-shaped model configurations: the shapes that set step time, weight size and KV bytes.

Pure Python (no torch, no polars) so that the GPU measurement script runs standalone and `fit` can
derive KV capacity from the same numbers the measurement used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lapsbench.errors import LapsbenchError


@dataclass(frozen=True)
class LlamaConfig:
    """Decoder shape. Weights are untied (separate embedding and LM head), as in the Llama family."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def params(self) -> int:
        """Parameter count: embedding + LM head + per layer (QKV, O, gate/up/down, 2 norms) + final norm."""
        h, d = self.hidden, self.head_dim
        attn = h * (self.heads * d) + 2 * h * (self.kv_heads * d) + (self.heads * d) * h
        mlp = 3 * h * self.intermediate
        return 2 * self.vocab * h + self.layers * (attn + mlp + 2 * h) + h

    @property
    def weight_bytes(self) -> int:
        """bf16 weights."""
        return 2 * self.params

    @property
    def kv_bytes_per_token(self) -> int:
        """bf16 K and V of every layer for one token: 2 · layers · kv_heads · head_dim · 2 bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


MODELS: dict[str, LlamaConfig] = {
    # Drafts
    "llama-68m": LlamaConfig(hidden=768, intermediate=3072, layers=2, heads=12, kv_heads=12, vocab=32000),
    "tinyllama-1.1b": LlamaConfig(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000),
    # Targets
    "llama2-7b": LlamaConfig(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000),
    "llama3-8b": LlamaConfig(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256),
    "llama2-13b": LlamaConfig(hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40, vocab=32000),
    # Tiny shape for CPU tests of the measurement code.
    "tiny-test": LlamaConfig(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=256),
}

CUSTOM_KEYS = ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab")


def parse_model_spec(spec: str) -> tuple[str, LlamaConfig]:
    """`NAME` of a known config, or `NAME:hidden=..,intermediate=..,layers=..,heads=..,kv_heads=..,vocab=..`."""
    if ":" not in spec:
        if spec not in MODELS:
            raise LapsbenchError(f"--model: unknown model {spec!r}; expected one of {', '.join(MODELS)} "
                                 "or NAME:hidden=H,intermediate=I,layers=L,heads=A,kv_heads=K,vocab=V")
        return spec, MODELS[spec]
    name, _, rest = spec.partition(":")
    values: dict[str, int] = {}
    for part in rest.split(","):
        key, _, raw = part.partition("=")
        key = key.strip()
        if key not in CUSTOM_KEYS:
            raise LapsbenchError(f"--model {spec}: unknown key {key!r}; expected {', '.join(CUSTOM_KEYS)}")
        try:
            values[key] = int(raw)
        except ValueError:
            raise LapsbenchError(f"--model {spec}: {key}={raw!r} is not an integer") from None
        if values[key] <= 0:
            raise LapsbenchError(f"--model {spec}: {key}={raw} must be positive")
    missing = [k for k in CUSTOM_KEYS if k not in values]
    if not name or missing:
        raise LapsbenchError(f"--model {spec}: needs a name and all of {', '.join(CUSTOM_KEYS)}; missing {missing}")
    cfg = LlamaConfig(**values)
    if cfg.hidden % cfg.heads or cfg.heads % cfg.kv_heads:
        raise LapsbenchError(f"--model {spec}: hidden must divide by heads and heads by kv_heads")
    return name, cfg
