"""lapsbench vs Vidur: wall time per simulated request on the same trace (tracker issue #8).

    python benchmarks/bench_vs_vidur.py [--requests N] [--repeats 3] [--venv benchmarks/.venv-vidur]

1. Creates (or reuses) a virtualenv for Vidur and pip-installs `--vidur-spec` (default vidur==0.0.26)
   into it; lapsbench is never installed there.
2. Writes, into a work directory, the first N requests (default: all 19,366) of
   traces/azure_conv_2023.parquet (the Azure conv 2023 trace: the same requests as Vidur's own
   splitwise_conv.csv) in the CSV format of Vidur's
   trace-replay request generator (Date, Time, PromptTokenCount, CompletionTokenCount), and a
   lapsbench scenario over the same N requests.
3. Writes Vidur-format profiling CSVs (mlp.csv, attention.csv) for Llama-2-7B / H100 / TP1. Vidur ≥ 0.0.2x
   ships no profiling data in its wheel: it downloads it from the HuggingFace hub at run time, which
   this machine cannot reach. The tables are therefore derived from lapsbench's measured
   `h100-llama2-7b` profile (public `lapsbench.models.cost` functions), so both simulators price steps
   alike. Per-layer split: all token-linear work in `mlp_up_proj`, attention's context-dependent part
   in `attn_prefill` / `attn_decode`, the other operators ~0. The values change what Vidur simulates
   only as much as a different GPU would; the cost of simulating is what is measured.
4. One untimed warm-up run of each (Vidur trains its execution-time regressors and caches the prediction
   tables, lapsbench compiles its engine into numba's cache: one-offs per configuration / install; their
   times are printed), then `--repeats` rounds, each running
   lapsbench then Vidur, alternating, on the same requests. Prints medians, per-request times, ratios.

Timed phases. lapsbench: the whole `python -m lapsbench run` process (and its `wall_s`), then in a
second process (benchmarks/lapsbench_driver.py) import, the first `run_scenario` (which also loads the
compiled engine from numba's cache, once per process), further `run_scenario` calls (the simulation:
trace load, workload, step table, engine, records) and writing the results. Vidur
(benchmarks/vidur_driver.py): import, init (trace → Request objects, predictor from cache, event queue),
the event loop, output writing, and the whole process. Three ratios per simulated request are printed:
simulation (Vidur loop / lapsbench warm run: the issue's figure; lapsbench's includes its trace loading),
with one-offs (Vidur init + loop / lapsbench first run in a process), and whole process / whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from lapsbench.models.cost import find_profile, load_profile_file

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "traces" / "azure_conv_2023.parquet"
DRIVER = Path(__file__).resolve().parent / "vidur_driver.py"
LB_DRIVER = Path(__file__).resolve().parent / "lapsbench_driver.py"

# Vidur's Llama-2-7B model config (vidur/config/model_config.py: Llama2_7BModelConfig): the profiling
# rows must carry these values or Vidur's loader filters them out.
LLAMA2_7B = {"n_head": 32, "n_kv_head": 32, "n_embd": 4096, "n_expanded_embd": 11008,
             "vocab_size": 32768, "use_gated_mlp": True}
LAYERS = 32
EPS_MS = 1e-4  # "negligible" operators: tiny but positive
MLP_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj", "mlp_act",
           "input_layernorm", "post_attention_layernorm", "attn_rope", "add")


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------ venv

def ensure_vidur_venv(venv: Path, spec: str) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        log(f"creating virtualenv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('vidur'))"],
                           capture_output=True, text=True)
    want = spec.split("==", 1)[1] if "==" in spec else None
    have = probe.stdout.strip() if probe.returncode == 0 else None
    if have is None or (want is not None and have != want):
        log(f"pip install {spec}  (into {venv}; pulls numpy, pandas, scikit-learn, plotly, wandb, ...)")
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", spec], check=True)
        have = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('vidur'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    log(f"vidur {have} in {venv}")
    return py


# ------------------------------------------------------------------------------------------ inputs

def write_vidur_trace(n: int, path: Path, date: str) -> pl.DataFrame:
    df = pl.read_parquet(TRACE).sort("arrival_s")
    df = df.head(n) if n > 0 else df
    t0 = float(df["arrival_s"][0])
    pl.DataFrame({
        "Date": [date] * df.height,
        "Time": (df["arrival_s"] - t0).to_numpy(),
        "PromptTokenCount": df["prompt_tokens"].to_numpy(),
        "CompletionTokenCount": df["output_tokens"].to_numpy(),
    }).write_csv(path)
    return df


def write_vidur_profiles(profile: str, out: Path, max_tokens: int, max_batch: int) -> None:
    """mlp.csv / attention.csv in Vidur's profiling schema, priced by lapsbench's profile (ms per layer)."""
    cost = load_profile_file(find_profile(profile, [REPO]))

    def prefill_ms(tokens: np.ndarray, context: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, np.float64)
        context = np.asarray(context, np.float64)
        return 1e3 * cost.prefill_s(np.ones_like(tokens), tokens, tokens ** 2, tokens * context, context,
                                    with_draft=False)

    def linear_ms(tokens: np.ndarray) -> np.ndarray:  # token-linear part: prefill with no quadratic terms
        tokens = np.asarray(tokens, np.float64)
        z = np.zeros_like(tokens)
        return 1e3 * cost.prefill_s(np.ones_like(tokens), tokens, z, z, z, with_draft=False)

    grid = np.unique(np.concatenate([[1, 2, 4], np.arange(8, 1025, 8), np.arange(1040, 4097, 16),
                                     np.arange(4128, max_tokens + 1, 32)])).astype(np.int64)
    mlp = {f"time_stats.{op}.median": np.full(grid.size, EPS_MS) for op in MLP_OPS}
    mlp["time_stats.mlp_up_proj.median"] = linear_ms(grid) / LAYERS
    mlp_df = pl.DataFrame({**mlp, **{k: [v] * grid.size for k, v in LLAMA2_7B.items()},
                           "num_tokens": grid, "num_tensor_parallel_workers": [1] * grid.size})
    mlp_df.write_csv(out / "mlp.csv")

    rows = []
    kvs = np.arange(0, max_tokens + 1, 256)
    for chunk in np.unique(np.concatenate([np.arange(32, 1025, 32), np.arange(1088, max_tokens + 1, 256)])):
        ctx = kvs[kvs + chunk <= max_tokens]
        t = np.maximum(prefill_ms(np.full(ctx.size, chunk), ctx) - linear_ms(np.full(ctx.size, chunk)), 0)
        rows.append(pl.DataFrame({"batch_size": 1, "prefill_chunk_size": int(chunk), "kv_cache_size": ctx,
                                  "is_prefill": True, "attn_prefill": t / LAYERS + EPS_MS,
                                  "attn_decode": 0.0}))
    for b in range(1, max_batch + 1):
        ctx = kvs
        n = np.full(ctx.size, float(b))
        t = 1e3 * cost.verify_s(n, n, n * ctx) - linear_ms(n)
        rows.append(pl.DataFrame({"batch_size": b, "prefill_chunk_size": 0, "kv_cache_size": ctx,
                                  "is_prefill": False, "attn_prefill": 0.0,
                                  "attn_decode": np.maximum(t, 0) / LAYERS + EPS_MS}))
    att = pl.concat(rows, how="vertical_relaxed")
    att = att.with_columns(
        pl.col("attn_prefill").alias("time_stats.attn_prefill.median"),
        pl.col("attn_decode").alias("time_stats.attn_decode.median"),
        pl.lit(EPS_MS).alias("time_stats.attn_kv_cache_save.median"),
        pl.lit(LLAMA2_7B["n_embd"]).alias("n_embd"), pl.lit(LLAMA2_7B["n_head"]).alias("n_q_head"),
        pl.lit(LLAMA2_7B["n_kv_head"]).alias("n_kv_head"), pl.lit(16).alias("block_size"),
        pl.lit(1).alias("num_tensor_parallel_workers"), pl.lit(max_tokens).alias("max_model_len"),
        pl.lit("synthetic-from-lapsbench").alias("attention_backend"),
    ).drop("attn_prefill", "attn_decode")
    att.write_csv(out / "attention.csv")


def vidur_flags(trace_csv: Path, date: str, n: int, max_batch: int, max_tokens: int, work: Path,
                predictor: str, full_rf_grid: bool) -> list[str]:
    p = f"{predictor}_execution_time_predictor_config"
    flags = {
        "--seed": 42,
        "--cluster_config_num_replicas": 1,
        "--replica_config_model_name": "meta-llama/Llama-2-7b-hf",
        "--replica_config_device": "h100",
        "--replica_config_network_device": "h100_dgx",
        "--replica_config_tensor_parallel_size": 1,
        "--replica_config_num_pipeline_stages": 1,
        "--global_scheduler_config_type": "round_robin",  # 1 replica: a pass-through; FCFS is in the replica
        "--replica_scheduler_config_type": "vllm",
        "--vllm_scheduler_config_batch_size_cap": max_batch,
        "--vllm_scheduler_config_max_tokens_in_batch": max_tokens,
        "--request_generator_config_type": "trace_replay",
        "--trace_request_generator_config_trace_file": str(trace_csv),
        "--trace_request_generator_config_date": date,
        "--trace_request_generator_config_max_tokens": max_tokens,
        "--trace_request_generator_config_prefill_scale_factor": 1,
        "--trace_request_generator_config_decode_scale_factor": 1,
        "--trace_request_generator_config_time_scale_factor": 1,
        "--execution_time_predictor_config_type": predictor,
        f"--{p}_cache_dir": str(work / "vidur_cache"),
        f"--{p}_prediction_max_tokens_per_request": max_tokens,
        f"--{p}_prediction_max_prefill_chunk_size": max_tokens,
        f"--{p}_prediction_max_batch_size": max_batch,
        "--metrics_config_output_dir": str(work / "vidur_out"),
    }
    if predictor == "random_forrest" and not full_rf_grid:
        flags.update({f"--{p}_num_estimators": 250, f"--{p}_max_depth": 16, f"--{p}_min_samples_split": 2,
                      f"--{p}_k_fold_cv_splits": 2})
    del n
    switches = ["--no-metrics_config_enable_chrome_trace", "--no-metrics_config_store_plots"]
    return [x for k, v in flags.items() for x in (k, str(v))] + switches


def lapsbench_scenario(n: int, max_batch: int, max_tokens: int, out: Path) -> str:
    return f"""# generated by benchmarks/bench_vs_vidur.py
name = "vs-vidur"
seed = 42
replications = 1

[trace]
path = "{TRACE}"
max_requests = {n}

[model]
profile = "h100-llama2-7b"

[speculation]
k = 0

[engine]
batching = "continuous"
max_batch = {max_batch}
max_batch_tokens = {max_tokens}
preemption = "recompute"

[[scheduler]]
name = "fcfs"

[output]
dir = "{out}"
"""


# ------------------------------------------------------------------------------------------ runs

def run_lapsbench(scenario: Path, out: Path, timings: Path) -> dict[str, float]:
    """The whole `lapsbench run` process, then the in-process phases (benchmarks/lapsbench_driver.py)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lapsbench", "run", str(scenario), "--quiet", "--out", str(out)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    proc = time.perf_counter() - t0
    meta = json.loads((out / "meta.json").read_text())
    subprocess.run([sys.executable, str(LB_DRIVER), str(scenario), "--out", str(out.with_name(out.name + "_d")),
                    "--timings", str(timings)], cwd=REPO, check=True)
    phases = json.loads(timings.read_text())
    return {"wall_s": float(meta["wall_s"]), "process_s": proc, **phases}


def run_vidur(py: Path, profile_dir: Path, flags: list[str], timings: Path) -> dict[str, float]:
    cmd = [str(py), str(DRIVER), "--profile-dir", str(profile_dir), "--timings", str(timings), "--", *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=timings.parent, env=env, capture_output=True, text=True)
    proc = time.perf_counter() - t0
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-8000:])
        raise SystemExit(f"vidur run failed (exit {res.returncode})")
    out = json.loads(timings.read_text())
    out["process_s"] = proc
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=0,
                    help="first N requests of the trace (default 0: all 19,366)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds, each lapsbench then Vidur (default 3)")
    ap.add_argument("--venv", type=Path, default=REPO / "benchmarks" / ".venv-vidur")
    ap.add_argument("--vidur-spec", default="vidur==0.0.26", help="pip requirement for Vidur")
    ap.add_argument("--max-batch", type=int, default=64, help="lapsbench max_batch = Vidur batch_size_cap")
    ap.add_argument("--max-tokens", type=int, default=16384,
                    help="lapsbench max_batch_tokens = Vidur max_tokens_in_batch = per-request max tokens")
    ap.add_argument("--predictor", default="random_forrest", choices=["linear_regression", "random_forrest"],
                    help="Vidur execution-time predictor (training is one-off; the loop uses its tables). "
                         "linear_regression cannot be instantiated in vidur 0.0.26 (abstract method)")
    ap.add_argument("--full-rf-grid", action="store_true",
                    help="Vidur's default random-forest grid search (27 settings x 10-fold CV per operator; "
                         "slow on 2 cores) instead of one setting (250 trees, depth 16, 2-fold CV)")
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    a = ap.parse_args()

    py = ensure_vidur_venv(a.venv.resolve(), a.vidur_spec)
    work = (a.work or Path(tempfile.mkdtemp(prefix="vs-vidur-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    date = "2023-11-16"
    trace_csv = work / "azure_conv_vidur.csv"
    df = write_vidur_trace(a.requests, trace_csv, date)
    n = df.height
    assert int((df["prompt_tokens"] + df["output_tokens"]).max()) <= a.max_tokens, "raise --max-tokens"
    profile_dir = work / "profiling"
    profile_dir.mkdir(exist_ok=True)
    write_vidur_profiles("h100-llama2-7b", profile_dir, a.max_tokens, a.max_batch)
    scenario = work / "vs-vidur.toml"
    scenario.write_text(lapsbench_scenario(n, a.max_batch, a.max_tokens, work / "lb_out"))
    flags = vidur_flags(trace_csv, date, n, a.max_batch, a.max_tokens, work, a.predictor, a.full_rf_grid)

    log(f"work dir {work}; {n} requests, {float(df['arrival_s'][-1] - df['arrival_s'][0]):.0f} s of trace")
    log("lapsbench: " + shlex.join([sys.executable, "-m", "lapsbench", "run", str(scenario), "--quiet",
                                    "--out", "DIR"]))
    log("vidur:     " + shlex.join([str(py), str(DRIVER), "--profile-dir", str(profile_dir),
                                    "--timings", "T.json", "--", *flags]))

    t0 = time.perf_counter()
    run_lapsbench(scenario, work / "lb_out_warm", work / "lapsbench_warm.json")
    log(f"lapsbench warm-up (compiles the engine on a fresh install, one-off): {time.perf_counter() - t0:.1f} s")
    warm = run_vidur(py, profile_dir, flags, work / "vidur_warm.json")
    log(f"vidur warm-up (train regressors + cache tables, one-off): init {warm['init_s']:.1f} s, "
        f"process {warm['process_s']:.1f} s")

    lb_runs, vd_runs = [], []
    for rep in range(a.repeats):
        lb = run_lapsbench(scenario, work / f"lb_out_{rep}", work / f"lapsbench_{rep}.json")
        vd = run_vidur(py, profile_dir, flags, work / f"vidur_{rep}.json")
        lb_runs.append(lb)
        vd_runs.append(vd)
        log(f"round {rep + 1}: lapsbench simulation {lb['run_s']:.3f} s, first run {lb['first_s']:.3f} s, "
            f"wall_s {lb['wall_s']:.3f} s (process {lb['process_s']:.2f} s) | "
            f"vidur loop {vd['run_s']:.2f} s, init {vd['init_s']:.2f} s, import {vd['import_s']:.2f} s, "
            f"write {vd['write_s']:.2f} s (process {vd['process_s']:.2f} s); "
            f"simulated {vd['sim_time_s']:.0f} s, {vd['requests']} requests")

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    lb_sim, lb_first, lb_wall = med(lb_runs, "run_s"), med(lb_runs, "first_s"), med(lb_runs, "wall_s")
    lb_imp, lb_write, lb_proc = med(lb_runs, "import_s"), med(lb_runs, "write_s"), med(lb_runs, "process_s")
    vd_loop, vd_init = med(vd_runs, "run_s"), med(vd_runs, "init_s")
    vd_imp, vd_write, vd_proc = med(vd_runs, "import_s"), med(vd_runs, "write_s"), med(vd_runs, "process_s")
    us = 1e6 / n
    ratios = {"simulation": vd_loop / lb_sim, "with_one_offs": (vd_loop + vd_init) / lb_first,
              "process": vd_proc / lb_proc}
    log("")
    log(f"medians of {a.repeats} alternating rounds, {n} requests (µs per simulated request in brackets)")
    log(f"  lapsbench  simulation (warm run)  {lb_sim:9.3f} s  [{lb_sim * us:9.1f} µs]")
    log(f"  lapsbench  first run in a process {lb_first:9.3f} s  [{lb_first * us:9.1f} µs]"
        "  (+ loading the compiled engine)")
    log(f"  lapsbench  `lapsbench run` wall_s {lb_wall:9.3f} s  [{lb_wall * us:9.1f} µs]")
    log(f"  lapsbench  import                 {lb_imp:9.3f} s")
    log(f"  lapsbench  write output           {lb_write:9.3f} s")
    log(f"  lapsbench  whole process          {lb_proc:9.3f} s  [{lb_proc * us:9.1f} µs]")
    log(f"  vidur      event loop             {vd_loop:9.3f} s  [{vd_loop * us:9.1f} µs]")
    log(f"  vidur      init (trace, predictor){vd_init:9.3f} s  [{vd_init * us:9.1f} µs]")
    log(f"  vidur      import                 {vd_imp:9.3f} s")
    log(f"  vidur      write output           {vd_write:9.3f} s")
    log(f"  vidur      whole process          {vd_proc:9.3f} s  [{vd_proc * us:9.1f} µs]")
    log(f"  vidur      one-off warm-up run    {warm['process_s']:9.3f} s")
    log(f"ratio per simulated request, simulation: vidur loop / lapsbench warm run:          "
        f"{ratios['simulation']:8.1f}x")
    log(f"ratio per simulated request, with one-offs: vidur init+loop / lapsbench first run: "
        f"{ratios['with_one_offs']:8.1f}x")
    log(f"ratio per simulated request, whole process / whole process:                        "
        f"{ratios['process']:8.1f}x")
    (work / "summary.json").write_text(json.dumps({
        "requests": n, "repeats": a.repeats, "lapsbench": lb_runs, "vidur": vd_runs, "vidur_warmup": warm,
        "vidur_flags": flags, "ratios": ratios}, indent=1))
    log(f"summary: {work / 'summary.json'}")


if __name__ == "__main__":
    main()
