"""Build the paper-like workloads of docs/reproduction.md from real per-request data: the SpecDecode-Bench
records shipped in data/acceptance/ (Llama-3.1-8B-Instruct on an H100, EAGLE-3 drafts; each record has
its prompt length, output length and measured per-position acceptance lengths).

Writes, deterministically (run from the repository root):
- data/workloads/<workload>.csv: one row per record of the workload's pool (`num_prefill_tokens`,
  `num_decode_tokens`, `acceptance_record` = the record's index among its dataset's eagle records), which
  `[trace] synth` resamples with replacement per replication, each request keeping its own record's
  acceptance (`mapping = "column"`);
- scenarios/papers/<workload>_<arrival>.toml: batch size 1, k = 4, the measured H100 Llama-3-8B profile;
  `[trace] synth` with Poisson or bursty (gamma, CV 2.5) arrivals at the rate where the offered load is
  ρ = 1 at rate_scale 1, so `lapsbench compare SCENARIO --rates 0.6,0.8,0.9` runs ρ = 0.6, 0.8, 0.9
  (the scenario's own rate_scale is 0.8).

Pools (which record set stands for which paper dataset, and why: docs/reproduction.md):
- chat: sharegpt (real chat prompts, short: p50 182 tokens);
- code: instructcoder (short code-edit prompts, outputs of tens to a few hundred tokens, like MBPP);
- reasoning: the sharegpt records with outputs of at least 512 tokens (long answers; no reasoning
  records ship);
- stress: every instructcoder record, including the runaway generations that hit the 8192-token cap
  (heavy-tailed service).
The other pools drop records at the 8192-token cap (runaway generations, 4 sharegpt and 5 instructcoder).

    python scripts/make_paper_workloads.py
"""

from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.engine.steptable import NS, build_step_table
from lapsbench.models import rng
from lapsbench.models.acceptance import EmpiricalAcceptance, load_acceptance_table
from lapsbench.models.cost import load_profile_file

RECORDS = "data/acceptance/specdecode_bench_llama31_8b_h100.parquet"
ACC = "../../acceptance/specdecode_bench_llama31_8b_h100.parquet"  # scenarios/papers/ -> data/
PROFILE = "h100-llama3-8b"
K = 4
CAP = 8192
REQUESTS = 2000
REPLICATIONS = 3
SEED = 2025
BURSTY_CV = 2.5
# name: (dataset, keep(output tokens), arrival processes, what it stands for)
WORKLOADS = {
    "chat": ("sharegpt", lambda out: out < CAP, ("poisson", "gamma"), "Chatbot Instruction Prompts"),
    "code": ("instructcoder", lambda out: out < CAP, ("poisson", "gamma"), "MBPP"),
    "reasoning": ("sharegpt", lambda out: (out >= 512) & (out < CAP), ("poisson", "gamma"), "Mini-Thinky"),
    "stress": ("instructcoder", lambda out: out > 0, ("poisson",), "a heavy-tailed stress test"),
}
SCHEDULERS = """
[[scheduler]]
name = "fcfs"

[[scheduler]]
name = "ssjf"            # 5-bucket predictor (60% exact / 93% within one), cuts from held-out requests

[[scheduler]]
name = "las"

[[scheduler]]
name = "mlfq"            # vllm-ltr: 30 ms · 2^level

[[scheduler]]
name = "skip-join-mlfq"  # FastServe

[[scheduler]]
name = "ltr"             # rank predictor, Kendall tau 0.6

[[scheduler]]
name = "laps-sd"         # perceptible_policy = "perceived" (default), lognormal lengths, 25% median error

[[scheduler]]
name = "laps-sd"
label = "laps-sd-queue"
perceptible_policy = "queue"

[[scheduler]]
name = "laps-sd"
label = "laps-sd-global"
perceptible_policy = "global-srpt"

[[scheduler]]
name = "srpt-sd"         # oracle ceiling: true lengths and true future acceptance
"""


def pool(dataset: str, keep) -> pl.DataFrame:
    """The dataset's eagle records in file order, indexed as lapsbench.models.acceptance.acceptance_records
    indexes them (records with fewer than two positions dropped), then filtered by output length."""
    df = load_acceptance_table(RECORDS).filter((pl.col("dataset") == dataset) & (pl.col("method") == "eagle"))
    df = df.filter(pl.col("acc_len").list.len() >= 2).with_row_index("acceptance_record")
    return df.filter(keep(pl.col("output_tokens")))


def mean_service_s(df: pl.DataFrame) -> float:
    """Mean batch-1 service time of the pool's records under the scenario's profile and k (each record's
    own acceptance, replication 0's draws for replays past a record's end)."""
    cost = load_profile_file(Path("profiles") / f"{PROFILE}.toml")
    ids = np.arange(df.height, dtype=np.int64)
    out = df["output_tokens"].to_numpy().astype(np.int64)
    lists = [np.asarray(a, np.int64) for a in df["acc_len"].to_list()]
    acc = EmpiricalAcceptance.build(lists, ids, out, K, rng.stream_key(SEED, 0, rng.Streams.ACCEPTANCE))
    table = build_step_table(ids, df["prompt_tokens"].to_numpy().astype(np.int64), out, K, cost, acc)
    return float(table.service_ns().mean() / NS)


def scenario(name: str, dataset: str, arrival: str, rate: float, stands_for: str, pool_df: pl.DataFrame) -> str:
    arrivals = "Poisson" if arrival == "poisson" else f"bursty (gamma inter-arrivals, CV {BURSTY_CV})"
    cv = f"cv = {BURSTY_CV}\n" if arrival == "gamma" else ""
    out = pool_df["output_tokens"]
    return f"""# Paper-like {name} workload (stands for {stands_for}), {arrivals} arrivals. Generated by
# scripts/make_paper_workloads.py; see docs/reproduction.md.
# - requests: {REQUESTS} per replication, resampled afresh per replication from data/workloads/{name}.csv
#   ({pool_df.height} SpecDecode-Bench {dataset} records: prompt p50 {int(pool_df['prompt_tokens'].median())},
#   output p50 {int(out.median())}, mean {out.mean():.0f}), each with its own measured EAGLE-3 acceptance
#   (mapping = "column");
# - cost: the measured H100 Llama-3-8B + Llama-68M profile, batch size 1, k = {K};
# - synth rate {rate:.6g} req/s = 1 / mean service time, so the offered load is rho = rate_scale (0.8 here;
#   `lapsbench compare THIS.toml --rates 0.6,0.8,0.9` sweeps rho).
name = "{name}_{'poisson' if arrival == 'poisson' else 'bursty'}"
seed = {SEED}
replications = {REPLICATIONS}

[trace]
rate_scale = 0.8

[trace.synth]
requests = {REQUESTS}
rate = {rate:.6g}
arrival = "{arrival}"
{cv}lengths = "csv:../../workloads/{name}.csv"

[model]
profile = "{PROFILE}"

[speculation]
k = {K}
acceptance = {{ kind = "empirical", path = "{ACC}", dataset = "{dataset}", method = "eagle", mapping = "column" }}
{SCHEDULERS}
[output]
dir = "results/papers/{name}_{'poisson' if arrival == 'poisson' else 'bursty'}"
"""


def main() -> None:
    Path("data/workloads").mkdir(parents=True, exist_ok=True)
    for name, (dataset, keep, arrivals, stands_for) in WORKLOADS.items():
        df = pool(dataset, keep)
        df.select(pl.col("prompt_tokens").alias("num_prefill_tokens"),
                  pl.col("output_tokens").alias("num_decode_tokens"), "acceptance_record").write_csv(
                      f"data/workloads/{name}.csv")
        rate = 1.0 / mean_service_s(df)
        for arrival in arrivals:
            tag = "poisson" if arrival == "poisson" else "bursty"
            text = scenario(name, dataset, arrival, rate, stands_for, df)
            Path(f"scenarios/papers/{name}_{tag}.toml").write_text(text)
        print(f"{name}: {df.height} records of {dataset}, rate for rho = 1: {rate:.4f} req/s")


if __name__ == "__main__":
    main()
