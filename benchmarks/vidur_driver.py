"""Runs one Vidur simulation and times its phases; executed by bench_vs_vidur.py with the Python of
Vidur's own virtual environment (it must not import lapsbench).

    python vidur_driver.py --profile-dir DIR --timings OUT.json -- <vidur.main flags...>

The flags after `--` are handed to Vidur's own command-line parser unchanged (`SimulationConfig.
create_from_cli_args`, i.e. exactly what `python -m vidur.main FLAGS` does). Two things differ from a
plain `python -m vidur.main`, both only because this machine cannot reach the HuggingFace hub:

* `_load_predictions_from_hf` fails at once (it would otherwise try the network and then fall back
  to training, which is what it does here too);
* `_get_input_files` returns the profiling CSVs in `--profile-dir` instead of `snapshot_download`ing
  the HuggingFace dataset named by `--*_execution_time_predictor_config_model_profiling_dataset`.

Phases written to the timings JSON (seconds, `time.perf_counter`):
  import_s   importing vidur (and its numpy/pandas/sklearn/plotly stack);
  init_s     Simulator(config): trace CSV → Request objects, cluster, execution-time predictor (on the
             first run this trains the regressors and materialises the prediction tables; later runs
             load them from the cache dir), event queue;
  run_s      the discrete-event loop (Simulator.run without its _write_output);
  write_s    Simulator._write_output (metrics CSVs, per Vidur's metrics flags).
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit("usage: vidur_driver.py --profile-dir DIR --timings OUT.json -- VIDUR_FLAGS...")
    cut = argv.index("--")
    own, vidur_flags = argv[:cut], argv[cut + 1:]
    opts = dict(zip(own[::2], own[1::2], strict=True))
    profile_dir, timings_path = opts["--profile-dir"], opts["--timings"]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")

    t0 = time.perf_counter()
    from vidur.config import SimulationConfig
    from vidur.execution_time_predictor import sklearn_execution_time_predictor as skl
    from vidur.simulator import Simulator
    from vidur.utils.random import set_seeds
    import_s = time.perf_counter() - t0

    def local_input_files(self):  # noqa: ANN001, ANN202 - replaces a Vidur method
        return (f"{profile_dir}/mlp.csv", f"{profile_dir}/attention.csv",
                f"{profile_dir}/all_reduce.csv", f"{profile_dir}/send_recv.csv")

    def no_hub(self):  # noqa: ANN001, ANN202 - replaces a Vidur method
        raise RuntimeError("HuggingFace hub not reachable from this machine (offline benchmark)")

    skl.SklearnExecutionTimePredictor._get_input_files = local_input_files
    skl.SklearnExecutionTimePredictor._load_predictions_from_hf = no_hub

    sys.argv = ["vidur.main", *vidur_flags]
    config = SimulationConfig.create_from_cli_args()
    set_seeds(config.seed)

    t1 = time.perf_counter()
    sim = Simulator(config)
    init_s = time.perf_counter() - t1

    # Simulator.run() = event loop + _write_output(); time the two apart. run() asserts at its end that
    # every request completed.
    n_requests = len(sim._event_queue)  # one RequestArrivalEvent per request before the run
    write = sim._write_output
    sim._write_output = lambda: None
    t2 = time.perf_counter()
    sim.run()
    run_s = time.perf_counter() - t2
    t3 = time.perf_counter()
    write()
    write_s = time.perf_counter() - t3

    out = {"import_s": import_s, "init_s": init_s, "run_s": run_s, "write_s": write_s,
           "sim_time_s": float(sim._time), "requests": n_requests,
           "output_dir": config.metrics_config.output_dir}
    with open(timings_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
