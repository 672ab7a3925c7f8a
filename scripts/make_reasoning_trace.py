"""Build traces/reasoning_like_2023.parquet, the stand-in for LAPS-SD's reasoning workload (Mini-Thinky):
the Azure LLM conversation trace (2023) with its arrival times kept, prompts shortened four times (at least
16 tokens: reasoning prompts are short questions) and outputs made four times longer (at most 4096 tokens:
reasoning chains are long). Deterministic; run from the repository root:

    python scripts/make_reasoning_trace.py
"""

import polars as pl

from lapsbench.trace.schema import read_trace, write_trace

df = read_trace("traces/azure_conv_2023.parquet")
df = df.with_columns(
    (pl.col("prompt_tokens") // 4).clip(16, None).alias("prompt_tokens"),
    (pl.col("output_tokens") * 4).clip(1, 4096).alias("output_tokens"),
)
write_trace(df, "traces/reasoning_like_2023.parquet")
print(df.describe())
