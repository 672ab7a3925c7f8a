"""The Ray backend gives the local backend's results (a local Ray instance with 2 CPUs; skipped without
the `ray` extra: pip install '.[test,ray]')."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from polars.testing import assert_frame_equal

from lapsbench.run.sweep import load_sweep, run_sweep

from cli_helpers import real_lapsbench
from sweep_helpers import read_dataset, read_summary, write_sweep

pytest.importorskip("ray")


def test_ray_backend_equals_local_backend(tmp_path: Path) -> None:
    path = write_sweep(tmp_path)
    local = run_sweep(load_sweep(path, out=tmp_path / "local"), backend="local", workers=2)
    ray = run_sweep(load_sweep(path, out=tmp_path / "ray"), backend="ray", workers=2)
    assert (local.done, ray.done, ray.failed) == (4, 4, 0)
    assert_frame_equal(read_dataset(tmp_path / "local"), read_dataset(tmp_path / "ray"))
    assert_frame_equal(read_summary(tmp_path / "local"), read_summary(tmp_path / "ray"))
    # a re-run under Ray finds every point finished
    again = run_sweep(load_sweep(path, out=tmp_path / "ray"), backend="ray", workers=2)
    assert again.cached == 4


def test_unreachable_ray_address_exits_2(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on: bind, note it, close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_sweep(tmp_path, '[axes]\n"speculation.k" = [0]\n')
    res = real_lapsbench("sweep", path, "--backend", "ray", "--address", f"127.0.0.1:{port}", "--out",
                         tmp_path / "out", "--quiet", cwd=tmp_path)  # a real process: Ray's globals stay out
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"--address: cannot reach a Ray cluster at 127.0.0.1:{port}" in res.stderr
