"""Where speculative decoding stops paying (docs/speculation.md §1): throughput and mean TPOT against batch
size for K = 0…6 under continuous batching, on the shipped measured profiles, through the existing engine.

    python scripts/speculation_crossover.py [--out docs/speculation] [--quick | --from-csv]

Method: a saturated workload held at B running requests. 3·B requests (at least 8) all arrive at t = 0
(synthetic trace at 10⁹ req/s), outputs uniform on 128..384 tokens (so completions desynchronise), prompts
256 tokens; continuous batching with max_batch = B, a token budget that never binds (B·(K + 1) + 4096) and
unlimited KV memory (engine.kv_capacity_tokens = 10¹²: this isolates compute; see the doc for memory). While
the queue is non-empty every step runs exactly B requests (freed slots refill at once, their prefill mixed
into the step). Steady state is the window from the first completion to the last admission (the last
request's first token): throughput = output tokens generated in the window (each request's tokens
interpolated linearly between its first token and its finish) / window length; TPOT = mean tpot_s of the
requests whose whole decode lies in the window. One replication, FCFS (the order is irrelevant: every
request is admitted in arrival order either way). Writes crossover.csv (every point), summary.csv (best K
≥ 1 against K = 0 per batch), stops-paying.csv, step-decomposition.csv (the profile's decode-step price:
verify vs draft, no engine) and one png + svg per setup under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.config.scenario import parse_scenario
from lapsbench.run.runner import run_scenario

KS = list(range(7))
# measured profiles cover batch <= 64 and <= 512 verify tokens: larger batches extrapolate the fitted forms
BATCHES = [1, 4, 8, 16, 32, 64, 128, 256, 512]
ALPHAS = [0.6, 0.7, 0.8]
# (label, profile, draft)
SETUPS = [("H100 llama2-7b + llama-68m", "h100-llama2-7b", "llama-68m"),
          ("H200 llama2-7b + llama-68m", "h200-llama2-7b", "llama-68m"),
          ("H100 llama2-7b + tinyllama-1.1b", "h100-llama2-7b", "tinyllama-1.1b"),
          ("H200 llama2-7b + tinyllama-1.1b", "h200-llama2-7b", "tinyllama-1.1b"),
          # cost only (llama-68m does not share Llama-3's tokenizer): a GQA target, 1/4 of Llama-2's KV per token
          ("H100 llama3-8b + llama-68m", "h100-llama3-8b", "llama-68m")]
PEAK_CONTEXT = 256 + 384  # prompt + longest output: a request's largest KV footprint in tokens
EMPIRICAL = "eagle/sharegpt"


def scenario(profile: str, draft: str, k: int, batch: int, acceptance: dict) -> dict:
    """The saturated-workload scenario of one point (see the module docstring)."""
    return {
        "name": "crossover", "seed": 1,
        "trace": {"synth": {"requests": max(3 * batch, 8), "rate": 1e9, "output": "uniform:min=128,max=384",
                            "prompt": "fixed:256"}},
        "model": {"profile": profile, "draft": draft},
        "speculation": {"k": k, "acceptance": acceptance},
        "engine": {"batching": "continuous", "max_batch": batch, "max_batch_tokens": batch * (k + 1) + 4096,
                   "kv_capacity_tokens": 10**12},
        "scheduler": [{"name": "fcfs"}],
    }


def steady_state(requests: pl.DataFrame) -> tuple[float, float]:
    """(throughput tokens/s, mean TPOT s) over the window [first completion, last admission]."""
    ft = requests["first_token_s"].to_numpy()
    fin = requests["finish_s"].to_numpy()
    out = requests["output_tokens"].to_numpy().astype(np.float64)
    t0, t1 = fin.min(), ft.max()
    if t1 <= t0:  # too few requests for a window: whole run
        t0, t1 = 0.0, fin.max()

    def tokens_by(t: float) -> float:
        frac = np.clip((t - ft) / np.maximum(fin - ft, 1e-12), 0.0, 1.0)
        return float(np.where(t >= ft, 1.0 + (out - 1.0) * frac, 0.0).sum())

    throughput = (tokens_by(t1) - tokens_by(t0)) / (t1 - t0)
    inside = (ft >= t0) & (fin <= t1)
    tpot = requests["tpot_s"].to_numpy()
    pick = tpot[inside] if inside.sum() >= 2 else tpot
    return throughput, float(np.nanmean(pick))


def measure(setups, alphas, batches) -> pl.DataFrame:
    from lapsbench.run.assembly import build_cost

    rows = []
    for label, profile, draft in setups:
        capacity = build_cost(parse_scenario(scenario(profile, draft, 0, 1, {"kind": "fixed"}))).kv_capacity_tokens
        for alpha in alphas:
            acc = ({"kind": "empirical", "dataset": "sharegpt", "method": "eagle"} if alpha == EMPIRICAL
                   else {"kind": "fixed", "alpha": alpha})
            for batch in batches:
                for k in KS:
                    result = run_scenario(parse_scenario(scenario(profile, draft, k, batch, acc)))
                    thr, tpot = steady_state(result.requests)
                    rows.append({"setup": label, "profile": profile, "draft": draft, "acceptance": str(alpha),
                                 "batch": batch, "k": k, "throughput_tok_s": thr, "tpot_ms": tpot * 1e3,
                                 "fits_kv": batch * PEAK_CONTEXT <= capacity})
            print(f"{label} α={alpha}: done", flush=True)
    return pl.DataFrame(rows)


def summarise(df: pl.DataFrame) -> pl.DataFrame:
    """Per (setup, acceptance, batch): best K, its speed-up over K = 0; and the crossover batch per
    (setup, acceptance): the smallest batch from which on no K ≥ 1 beats K = 0."""
    best = (df.filter(pl.col("k") >= 1).sort("throughput_tok_s", descending=True)
            .group_by(["setup", "acceptance", "batch"], maintain_order=True).first()
            .rename({"k": "best_k", "throughput_tok_s": "best_tok_s", "tpot_ms": "best_tpot_ms"})
            .drop("profile", "draft"))
    plain = (df.filter(pl.col("k") == 0).select("setup", "acceptance", "batch", "throughput_tok_s", "tpot_ms")
             .rename({"throughput_tok_s": "k0_tok_s", "tpot_ms": "k0_tpot_ms"}))
    out = best.join(plain, on=["setup", "acceptance", "batch"]).with_columns(
        (pl.col("best_tok_s") / pl.col("k0_tok_s")).alias("speedup"))
    return out.sort(["setup", "acceptance", "batch"])


def crossover(summary: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for (setup, acc), g in summary.group_by(["setup", "acceptance"], maintain_order=True):
        g = g.sort("batch")
        pays = g["speedup"].to_numpy() > 1.0
        batches = g["batch"].to_numpy()
        # first batch size after which SD never pays again (None: pays at every measured batch)
        stop = next((int(b) for i, b in enumerate(batches) if not pays[i:].any()), None)
        rows.append({"setup": setup, "acceptance": acc, "sd_stops_paying_at_batch": stop,
                     "last_paying_batch": int(batches[pays].max()) if pays.any() else None})
    return pl.DataFrame(rows)


def decomposition(setups, batches, context: int = 384) -> pl.DataFrame:
    """A decode-only step priced by the profile (`sd_step_s`), every request at `context` tokens (the window's
    mean: 256-token prompt + half the mean output): target verify vs the K draft forwards, and the decode
    throughput at α = 0.7 (B · E[tokens] / step). No engine: the cost model's own answer."""
    from lapsbench.models.acceptance import mean_tokens_per_step
    from lapsbench.models.cost import sd_step_s
    from lapsbench.run.assembly import build_cost

    rows = []
    for label, profile, draft in setups:
        for batch in batches:
            for k in KS:
                cost = build_cost(parse_scenario(scenario(profile, draft, k, batch, {"kind": "fixed"})))
                n, c = np.array([batch]), np.array([batch * context])
                step = float(sd_step_s(cost, k, n, c, context_max=np.array([context]))[0])
                verify = float(sd_step_s(cost, 0, n, c, context_max=np.array([context]))[0]) if k == 0 else \
                    step - float(sum(cost.draft_s(n, c + j * n, np.array([context + j]))[0] for j in range(k)))
                rows.append({"setup": label, "batch": batch, "k": k, "step_ms": step * 1e3, "verify_ms": verify * 1e3,
                             "draft_share": 1.0 - verify / step,
                             "decode_tok_s_a07": batch * float(mean_tokens_per_step(0.7, k)) / step})
    df = pl.DataFrame(rows)
    # the draft forward time at which K breaks even with K = 0 at α = 0.7: E[tokens]·T(K=0) = verify + K·draft
    t0 = df.filter(pl.col("k") == 0).select("setup", "batch", pl.col("step_ms").alias("t0"))
    gain = pl.col("k").map_elements(lambda k: float(mean_tokens_per_step(0.7, k)), return_dtype=pl.Float64)
    return df.join(t0, on=["setup", "batch"]).with_columns(
        pl.when(pl.col("k") > 0).then((gain * pl.col("t0") - pl.col("verify_ms")) / pl.col("k"))
        .alias("breakeven_draft_ms_a07")).drop("t0")


def plot(df: pl.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: smaller files
    import matplotlib.pyplot as plt

    for (setup,), g in df.group_by(["setup"], maintain_order=True):
        accs = g["acceptance"].unique(maintain_order=True).to_list()
        fig, axes = plt.subplots(2, len(accs), figsize=(3.6 * len(accs), 6), squeeze=False, sharex=True)
        for j, acc in enumerate(accs):
            ga = g.filter(pl.col("acceptance") == acc)
            base = ga.filter(pl.col("k") == 0).sort("batch")["throughput_tok_s"].to_numpy()
            for k in KS:
                gk = ga.filter(pl.col("k") == k).sort("batch")
                style = dict(color="black", lw=2) if k == 0 else dict(lw=1)
                axes[0, j].plot(gk["batch"], gk["throughput_tok_s"].to_numpy() / base, label=f"K={k}", **style)
                axes[1, j].plot(gk["batch"], gk["tpot_ms"], label=f"K={k}", **style)
            axes[0, j].set_title(f"α = {acc}", fontsize=9)
            axes[0, j].axhline(1.0, color="grey", lw=0.5)
            axes[1, j].set_xlabel("batch size (running requests)")
            for ax in axes[:, j]:
                ax.set_xscale("log", base=2)
        axes[0, 0].set_ylabel("throughput / K=0")
        axes[1, 0].set_ylabel("mean TPOT (ms)")
        for ax in axes[1]:
            ax.set_yscale("log")
        axes[0, -1].legend(fontsize=7)
        fig.suptitle(setup, fontsize=10)
        fig.tight_layout()
        gpu, target, _, draft = setup.split(" ")
        stem = out / f"crossover-{gpu.lower()}-{target}-{draft}"
        fig.savefig(f"{stem}.png", dpi=80)
        fig.savefig(f"{stem}.svg")
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/speculation"))
    ap.add_argument("--quick", action="store_true", help="one setup, α = 0.7, four batch sizes (a smoke test)")
    ap.add_argument("--from-csv", action="store_true", help="re-derive tables and plots from OUT/crossover.csv")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.from_csv:
        df = pl.read_csv(a.out / "crossover.csv", schema_overrides={"acceptance": pl.String})
    elif a.quick:
        df = measure(SETUPS[:1], [0.7], [1, 8, 64, 256])
    else:
        df = pl.concat([measure(SETUPS, ALPHAS, BATCHES), measure(SETUPS[:1], [EMPIRICAL], BATCHES)])
    df.write_csv(a.out / "crossover.csv", float_precision=4)
    summary = summarise(df)
    summary.write_csv(a.out / "summary.csv", float_precision=4)
    cross = crossover(summary)
    cross.write_csv(a.out / "stops-paying.csv")
    decomposition(SETUPS, BATCHES).write_csv(a.out / "step-decomposition.csv", float_precision=4)
    with pl.Config(tbl_rows=200, tbl_width_chars=200):
        print(cross)
    plot(df, a.out)


if __name__ == "__main__":
    main()
