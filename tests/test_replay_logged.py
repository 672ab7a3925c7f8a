"""`lapsbench replay --executor logged --steps LOG` (lapsbench/replay/logged.py): the decision loop timed by a
step log reproduces the run that wrote the log, bit for bit, at batch 1 and under continuous batching with
recompute; a log of another run stops it with one line naming the step and column."""

from __future__ import annotations

import polars as pl
import pytest
from test_replay import EMPIRICAL, scenario

from lapsbench.calibrate.steplog import read_steplog
from lapsbench.engine.executor import SimulatedExecutor
from lapsbench.errors import LapsbenchError
from lapsbench.replay.logged import LoggedExecutor
from lapsbench.replay.run import replay_scenario

from cli_helpers import lapsbench
from conftest import REPO

CONTINUOUS = {"batching": "continuous", "max_batch": 4, "max_batch_tokens": 512, "kv_capacity_tokens": 6000,
              "preemption": "recompute"}


class Slow(SimulatedExecutor):
    """Steps take 1.7 × their price (in the loop's unit: integer ns at batch 1, as a real clock's): a log whose
    times are not the cost model's."""

    def clock(self, start, price):
        took = price * 17 // 10 if isinstance(price, int) else 1.7 * price
        return start + took, took


@pytest.mark.parametrize("engine", [{"batching": "none"}, CONTINUOUS], ids=["batch1", "continuous"])
def test_a_logged_replay_reproduces_the_run_that_wrote_the_log(engine, tmp_path) -> None:
    s = scenario(engine, ["fcfs", "las", "laps-sd"], EMPIRICAL, n=40, rate_scale=1.0 if engine is CONTINUOUS else 0.05)
    written, log = replay_scenario(s, Slow())
    path = tmp_path / "steps.parquet"
    log.write_parquet(path)
    again, relog = replay_scenario(s, LoggedExecutor(read_steplog(path), path))
    assert again.requests.equals(written.requests)
    assert relog.equals(log)
    if engine is CONTINUOUS:
        assert written.requests["preemptions"].sum() > 0


def test_a_log_of_another_run_is_one_line(tmp_path) -> None:
    s = scenario(CONTINUOUS, ["fcfs", "las"], n=40, rate_scale=1.0)
    _, log = replay_scenario(s, Slow())
    path = tmp_path / "steps.parquet"
    # a decode step of las with several requests, one token fewer in its context (a valid log, another run's)
    pick = log.with_row_index().filter((pl.col("scheduler") == "las") & (pl.col("decode_requests") > 1)
                                       & (pl.col("context_tokens") > pl.col("context_max")))[0]
    row, step = pick["index"][0], pick["step"][0]
    edited = log.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.col("context_tokens") - 1)
                              .otherwise(pl.col("context_tokens")).alias("context_tokens"))
    edited.write_parquet(path)
    with pytest.raises(LapsbenchError, match=rf"scheduler 'las' replication 0 step {step}: the loop scheduled "
                                             r"context_tokens = \d+, the log has \d+"):
        replay_scenario(s, LoggedExecutor(read_steplog(path), path))
    last = log.filter(pl.col("scheduler") == "las").tail(1)  # las's run logged one step longer
    longer = last.with_columns(pl.col("step") + 1, pl.col("start_s") + pl.col("wall_ms") / 1000)
    pl.concat([log, longer]).write_parquet(path)
    with pytest.raises(LapsbenchError, match=rf"scheduler 'las' replication 0: the loop ran {last['step'][0] + 1} "
                                             rf"steps, the log has {last['step'][0] + 2}"):
        replay_scenario(s, LoggedExecutor(read_steplog(path), path))
    log.filter(pl.col("step") < 5).write_parquet(path)  # a shorter run
    with pytest.raises(LapsbenchError, match="more than the log's 5 steps"):
        replay_scenario(s, LoggedExecutor(read_steplog(path), path))
    ex = LoggedExecutor(read_steplog(path), path)
    with pytest.raises(LapsbenchError, match="no steps of scheduler 'laps-sd' replication 0"):
        ex.check_runs(["fcfs", "laps-sd"], 1)


def test_cli_logged_replay_and_its_usage_errors(tmp_path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text("""name = "logged"\nseed = 2\n[trace]\npath = "traces/azure_conv_2023.parquet"
max_requests = 20\nrate_scale = 0.05\n[model]\nprofile = "h100-llama3-8b"\n[speculation]\nk = 4
acceptance = { kind = "fixed", alpha = 0.7 }\n[[scheduler]]\nname = "fcfs"\n""".replace(
        "traces/", str(REPO / "traces") + "/"))
    sim = tmp_path / "sim"
    r = lapsbench("replay", str(toml), "--executor", "simulated", "--out", str(sim), "--quiet")
    assert r.returncode == 0, r.stderr
    again = tmp_path / "again"
    r = lapsbench("replay", str(toml), "--executor", "logged", "--steps", str(sim / "steps.parquet"), "--out",
                  str(again), "--quiet")
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(again / "requests.parquet").equals(pl.read_parquet(sim / "requests.parquet"))
    for args, want in ((["--executor", "logged"], "no --steps"),
                       (["--steps", str(sim / "steps.parquet")], "--executor torch"),
                       (["--executor", "logd", "--steps", str(sim / "steps.parquet")],
                        "'torch', 'simulated' or 'logged'"),
                       (["--executor", "logged", "--steps", str(tmp_path / "nope.parquet")], "no such step log")):
        bad = tmp_path / "bad"
        r = lapsbench("replay", str(toml), *args, "--out", str(bad), "--quiet")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and want in r.stderr, r.stderr
        assert not bad.exists()
