"""Fuzzing the command line (issue 16, part 5): scenario TOML (keys, types, ranges), trace files (schema,
values, corrupt bytes) and command lines. Every case ends with exit 0, or exit 2 with exactly one line on
stderr; never a traceback (an exception escaping `main` fails the test), never a half-written file, and a
folder that holds something else than results is never deleted.

In-process through `lapsbench.cli.main` on tiny traces with the fixed profile, so a case takes milliseconds
once the batch-1 engines are compiled; a few cases run as real processes. Deterministic (derandomized)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cli_helpers import (
    assert_no_partial_output,
    assert_one_line_error,
    cli,
    real_lapsbench,
    write_scenario,
    write_trace,
)

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("fuzz")
    write_trace(w / "t.parquet")
    write_trace(w / "alpha.parquet", alpha=np.linspace(0.1, 0.9, 12))
    write_scenario(w / "s.toml", w / "t.parquet", w / "out")
    (w / "afile").write_text("x\n")
    (w / "notres").mkdir()
    (w / "notres" / "keep.txt").write_text("precious\n")
    (w / "short.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n"
                                 "2023-11-16 18:15:50.99,396\n")
    (w / "good.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n"
                                "2023-11-16 18:15:50.99,396,7\n")
    return w


def check(work: Path, code: int, err: str) -> None:
    """The invariant of every case (`pytest --hypothesis-show-statistics` shows how the cases ended)."""
    event(f"exit {code}" + (": " + err.split("error: ", 1)[-1].replace(f"{work}/", "")[:32] if code else ""))
    assert "Traceback" not in err, err
    if code != 0:
        assert_one_line_error(code, err)
    assert_no_partial_output(work)
    assert (work / "notres" / "keep.txt").is_file()


# ----------------------------------------------------------------------------------------- scenario TOML

def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) if not math.isfinite(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"


def toml_text(doc: dict) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, (dict, list))
             or (isinstance(v, list) and not all(isinstance(x, dict) for x in v)) or not v]
    for key, v in doc.items():
        if isinstance(v, dict) and v:
            lines += [f"[{json.dumps(key)}]", *(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items())]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for table in v:
                lines += [f"[[{json.dumps(key)}]]", *(f"{json.dumps(k)} = {toml_value(x)}" for k, x in table.items())]
    return "\n".join(lines) + "\n"


def base_scenario(work: Path, trace: str = "t.parquet") -> dict:
    return {"name": "fz", "seed": 1, "replications": 1,
            "trace": {"path": str(work / trace)},
            "model": {"profile": {"kind": "fixed", "step_s": 0.01, "draft_step_s": 0.001,
                                  "prefill_s_per_token": 0.0001}},
            "speculation": {"k": 2, "acceptance": {"kind": "fixed", "alpha": 0.6}},
            "scheduler": [{"name": "fcfs"}],
            "output": {"dir": str(work / "out")}}


KEYS = ["name", "seed", "replications", "colour", "trace.path", "trace.rate_scale", "trace.start_s",
        "trace.duration_s", "trace.max_requests", "trace.bogus", "trace.synth", "model.profile", "model.draft",
        "model.profile.step_s", "model.profile.kind", "model.profile.draft_step_s", "speculation.k",
        "speculation.acceptance", "speculation.acceptance.alpha", "speculation.acceptance.kind",
        "speculation.acceptance.use_trace_alpha", "speculation.acceptance.mean", "engine.batching",
        "engine.max_batch", "engine.max_batch_tokens", "engine.kv_capacity_tokens", "engine.preemption",
        "engine.block_size", "slo.ttft_s", "slo.e2e_s", "output.dir", "output.colour", "scheduler",
        "scheduler.0.name", "scheduler.0.label", "scheduler.0.unit", "scheduler.0.predictor", "trace", "model"]

scalars = st.one_of(
    st.integers(-3, 40), st.sampled_from([0, -1, 10**12, -(10**12), 2**63 - 1]),
    st.floats(allow_nan=True, allow_infinity=True, width=64), st.sampled_from([0.0, -0.5, 0.5, 1.0, 1e-300, 1e300]),
    st.text(max_size=6), st.sampled_from(["fcfs", "las", "continuous", "beta", "fixed", "swap", "steps", "",
                                          "t.parquet", "afile", "notres", "h100-llama2-7b"]),
    st.booleans())
values = st.one_of(scalars, st.lists(scalars, max_size=2),
                   st.dictionaries(st.sampled_from(["kind", "alpha", "requests", "rate", "name", "x"]), scalars,
                                   max_size=3))


def put(doc: dict, path: str, value: object) -> None:
    *parents, last = path.split(".")
    node: object = doc
    for p in parents:
        if isinstance(node, list):
            node = node[int(p)] if int(p) < len(node) else None
        elif isinstance(node, dict):
            if not isinstance(node.get(p), (dict, list)):
                node[p] = {}
            node = node[p]
        if node is None:
            return
    if isinstance(node, dict):
        if path == "replications" and isinstance(value, int) and not isinstance(value, bool):
            value = min(value, 3)  # a valid but huge count is slow, not wrong
        node[last] = value


@settings(FUZZ, max_examples=80)
@given(edits=st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=3),
       drop=st.lists(st.sampled_from(["trace", "model", "speculation", "scheduler", "output", "name"]), max_size=1),
       trace=st.sampled_from(["t.parquet", "alpha.parquet"]))
def test_fuzz_scenario_toml(work: Path, edits: list, drop: list, trace: str) -> None:
    doc = base_scenario(work, trace)
    for key in drop:
        doc.pop(key, None)
    for path, value in edits:
        put(doc, path, value)
    scenario = work / "fz.toml"
    scenario.write_text(toml_text(doc))
    code, _, err = cli("run", scenario, "--quiet")
    check(work, code, err)


# ----------------------------------------------------------------------------------------- trace files

column_values = st.one_of(
    st.lists(st.integers(-5, 50), min_size=1, max_size=6),
    st.lists(st.sampled_from([0, 1, 2**20, 2**20 + 1, 10**12, -(2**31)]), min_size=1, max_size=6),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=6),
    st.lists(st.one_of(st.none(), st.integers(1, 9)), min_size=1, max_size=6),
    st.lists(st.text(max_size=3), min_size=1, max_size=6),
    st.lists(st.booleans(), min_size=1, max_size=6))
COLUMNS = ["request_id", "arrival_s", "prompt_tokens", "output_tokens", "alpha", "predicted_output_tokens",
           "acc_len", "tenant"]


@st.composite
def trace_frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, 6))
    base = {"request_id": list(range(n)), "arrival_s": [0.5 * i for i in range(n)],
            "prompt_tokens": [8] * n, "output_tokens": [3] * n}
    for name in draw(st.lists(st.sampled_from(COLUMNS), max_size=3, unique=True)):
        col = draw(column_values)
        base[name] = (col * n)[:n]
    for name in draw(st.lists(st.sampled_from(COLUMNS[:4]), max_size=1)):
        base.pop(name, None)
    if not base:
        return pl.DataFrame()
    return pl.DataFrame({k: pl.Series(k, v, strict=False) for k, v in base.items()})


@settings(FUZZ, max_examples=40)
@given(frame=trace_frames(), corrupt=st.one_of(st.none(), st.tuples(
    st.sampled_from(["truncate", "flip"]), st.integers(0, 10**6), st.binary(min_size=1, max_size=8))))
def test_fuzz_trace_files(work: Path, frame: pl.DataFrame, corrupt: tuple | None) -> None:
    trace = work / "fz.parquet"
    frame.write_parquet(trace)
    if corrupt is not None:
        data = bytearray(trace.read_bytes())
        kind, at, junk = corrupt
        at %= len(data)
        data = data[:at] if kind == "truncate" else data[:at] + junk + data[at + len(junk):]
        trace.write_bytes(bytes(data))
    doc = base_scenario(work)
    doc["trace"]["path"] = str(trace)
    (work / "fzt.toml").write_text(toml_text(doc))
    for args in (["run", work / "fzt.toml", "--quiet"], ["trace", "info", trace],
                 ["trace", "slice", trace, "--first", "2", "--out", work / "fz-slice.parquet"]):
        code, _, err = cli(*args)
        check(work, code, err)


# ----------------------------------------------------------------------------------------- command lines

WORDS = ["run", "compare", "trace", "synth", "import", "slice", "info", "calibrate", "fit", "check", "bogus",
         "--out", "--seed", "--quiet", "--rates", "--requests", "-n", "--rate", "--first", "--sample", "--format",
         "--version", "-h", "--baseline", "--schedulers", "--replications", "--no-plots", "--arrival", "--cv",
         "--output-lengths", "--prompt-lengths", "--alpha-beta", "--start-s", "--duration-s", "--rate-scale",
         "--drop-zero", "--target", "-1", "0", "1", "2", "abc", "1e9", "0.5", "fast", "", "true", "poisson",
         "gamma", "fixed:4", "geometric:mean=3", "0.7,20", "fcfs", "las", "azure", "0.5,1", "2rps"]
PATHS = ["s.toml", "t.parquet", "afile", "notres", "missing.toml", "short.csv", "good.csv", "out", "new.parquet",
         "afile/x", ".", "fz-out"]


COMMANDS = [["run"], ["compare"], ["trace", "synth"], ["trace", "import"], ["trace", "slice"], ["trace", "info"],
            ["calibrate", "fit"], ["calibrate", "check"], ["trace"], ["bogus"], []]
command_lines = st.tuples(
    st.sampled_from(COMMANDS),
    st.lists(st.sampled_from(PATHS).map(lambda p: "@" + p), max_size=2),
    st.lists(st.tuples(st.sampled_from([w for w in WORDS if w.startswith("-") and len(w) > 1]),
                       st.one_of(st.sampled_from(WORDS), st.sampled_from(PATHS).map(lambda p: "@" + p))),
             max_size=4),
).map(lambda t: [*t[0], *t[1], *(w for pair in t[2] for w in pair)])


@settings(FUZZ, max_examples=120)
@given(words=command_lines)
def test_fuzz_command_lines(work: Path, words: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work)
    args = [str(work / w[1:]) if w.startswith("@") else w for w in words]
    code, _, err = cli(*args)
    check(work, code, err)


@settings(FUZZ, max_examples=4)
@given(words=command_lines)
def test_fuzz_command_lines_real_process(work: Path, words: list[str]) -> None:
    args = [str(work / w[1:]) if w.startswith("@") else w for w in words]
    r = real_lapsbench(*args, cwd=work)
    check(work, r.returncode, r.stderr)
