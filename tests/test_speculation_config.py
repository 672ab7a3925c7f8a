"""`[speculation] adaptive` (issue 18, part 1): every kind parses into its frozen spec, every bad input is one
line naming the key and value (exit 2 through the CLI), a profile that cannot say how much KV memory
free_draft_memory returns is refused before any work, and the rest runs and records K."""

from __future__ import annotations

from pathlib import Path

import pytest

from lapsbench.config.scenario import load_scenario, scenario_to_toml
from lapsbench.config.speculation import BatchTableSpec, GoodputSpec, OffUnderLoadSpec, largest_k
from lapsbench.errors import LapsbenchError

from cli_helpers import (
    FIXED,
    SCENARIO,
    assert_no_partial_output,
    assert_one_line_error,
    cli,
    write_scenario,
    write_trace,
)
from conftest import REPO


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("adaptive")
    write_trace(d / "t.parquet")
    return d


def scenario(d: Path, adaptive: str, k: int = 6, name: str = "s") -> Path:
    body = SCENARIO.replace("k = 3", f"k = {k}\nadaptive = {adaptive}" if adaptive else f"k = {k}")
    return write_scenario(d / f"{name}.toml", d / "t.parquet", d / "out", body)


GOOD = [
    ('{ kind = "batch-table", table = [[1, 5], [17, 4], [33, 3], [65, 1], [129, 0]] }',
     BatchTableSpec(table=((1, 5), (17, 4), (33, 3), (65, 1), (129, 0))), 5),
    ('{ kind = "goodput", k_max = 6 }', GoodputSpec(k_max=6), 6),
    ('{ kind = "goodput" }', GoodputSpec(k_max=6), 6),  # k_max defaults to speculation.k
    ('{ kind = "goodput", k_max = 3, per_request = true, prior_alpha = 0.5, prior_strength = 2 }',
     GoodputSpec(k_max=3, per_request=True, prior_alpha=0.5, prior_strength=2.0), 3),
    ('{ kind = "off-under-load", batch = 64 }', OffUnderLoadSpec(batch=64), 6),
    ('{ kind = "off-under-load", batch = 8, free_draft_memory = true }',
     OffUnderLoadSpec(batch=8, free_draft_memory=True), 6),
]


@pytest.mark.parametrize("text,spec,top", GOOD)
def test_kinds_parse_and_round_trip(d: Path, text: str, spec, top: int) -> None:
    s = load_scenario(scenario(d, text))
    assert s.speculation.adaptive == spec
    assert largest_k(s.speculation.adaptive, s.speculation.k) == top
    again = d / "again.toml"
    again.write_text(scenario_to_toml(s))
    assert load_scenario(again).speculation.adaptive == spec  # the resolved scenario loads back the same


def test_default_is_none_and_absent_from_resolved_toml(d: Path) -> None:
    s = load_scenario(scenario(d, ""))
    assert s.speculation.adaptive is None
    assert "adaptive =" not in scenario_to_toml(s)  # sweep point ids of existing scenarios stay unchanged


BAD = [
    ('{ kind = "batch-table", table = [[1, 5], [33, 3], [17, 4]] }', "table[2]: batch 17 after batch 33"),
    ('{ kind = "batch-table", table = [[1, 5], [17, 5], [17, 4]] }', "strictly increasing"),
    ('{ kind = "batch-table", table = [[2, 5], [17, 4]] }', "first row to start at batch 1"),
    ('{ kind = "batch-table", table = [[1, 5], [17, -1]] }', "table[1]: K -1"),
    ('{ kind = "batch-table", table = [[1, 7]] }', "K <= speculation.k = 6"),
    ('{ kind = "batch-table", table = [] }', "non-empty list"),
    ('{ kind = "batch-table", table = [[1, 5.5]] }', "pair of integers"),
    ('{ kind = "batch-table", table = [[1, true]] }', "pair of integers"),
    ('{ kind = "batch-table", table = [[1, 2, 3]] }', "pair of integers"),
    ('{ kind = "batch-table" }', "table: missing"),
    ('{ kind = "goodput", k_max = 7 }', "k_max: 7"),
    ('{ kind = "goodput", k_max = 0 }', "k_max: 0"),
    ('{ kind = "goodput", k_max = "6" }', "wrong type"),
    ('{ kind = "goodput", per_request = 1 }', "per_request: 1 has the wrong type"),
    ('{ kind = "goodput", prior_alpha = 1.0 }', "prior_alpha: 1.0"),
    ('{ kind = "goodput", prior_strength = 0 }', "prior_strength: 0.0"),
    ('{ kind = "goodput", window = 4 }', "window: unknown key"),
    ('{ kind = "off-under-load", batch = 0 }', "batch: 0"),
    ('{ kind = "off-under-load", free_draft_memory = "yes" }', "free_draft_memory"),
    ('{ kind = "smartspec" }', "kind: 'smartspec'"),
    ('{ table = [[1, 5]] }', "kind: None"),
    ('"batch-table"', "expected a table"),
]


@pytest.mark.parametrize("text,needle", BAD)
def test_bad_adaptive_is_one_line(d: Path, text: str, needle: str) -> None:
    path = scenario(d, text)
    with pytest.raises(LapsbenchError, match="speculation.adaptive") as err:
        load_scenario(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_adaptive_needs_speculation(d: Path) -> None:
    with pytest.raises(LapsbenchError, match="needs speculation.k >= 1"):
        load_scenario(scenario(d, '{ kind = "off-under-load" }', k=0))


def test_cli_bad_adaptive_exit_2(d: Path) -> None:
    path = scenario(d, '{ kind = "batch-table", table = [[1, 5], [17, 9]] }', name="cli_bad")
    code, _, err = cli("run", path, "--quiet")
    assert_one_line_error(code, err, "speculation.adaptive.table[1]: K 9", "cli_bad.toml")
    code, _, err = cli("run", scenario(d, ""), "--quiet", "--set", "speculation.adaptive.kind=nope")
    assert_one_line_error(code, err, "--set speculation.adaptive.kind: 'nope'")


FREE = '{ kind = "off-under-load", batch = 4, free_draft_memory = true }'


def profile_copy(d: Path, name: str, *edits: tuple[str, str]) -> str:
    """The shipped h100-llama2-7b profile with `edits` applied, as a path for model.profile."""
    text = (REPO / "profiles" / "h100-llama2-7b.toml").read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    (d / f"{name}.toml").write_text(text)
    return f'"{d / name}.toml"'


@pytest.mark.parametrize("profile, needle", [
    (None, "which the fixed profile has not"),
    ("unknown-draft", "draft 'my-draft' of unknown shape"),
    ("no-kv-bytes", "has no kv_bytes_per_token"),
])
def test_free_draft_memory_refused_where_the_profile_cannot_say(d: Path, profile: str | None, needle: str) -> None:
    """free_draft_memory needs the KV bytes per token of target and draft: a profile that cannot say how much
    memory SD off returns is refused with one line, exit 2, before anything is written."""
    out = d / "refused"
    path = scenario(d, FREE, name="free")
    if profile == "unknown-draft":
        edits = [('draft = "llama-68m"', 'draft = "my-draft"')] + [
            (f'[models."llama-68m".{part}]', f'[models."my-draft".{part}]')
            for part in ("decode", "prefill", "prefill.compute")]
        path.write_text(path.read_text().replace(FIXED, profile_copy(d, profile, *edits)))
    elif profile == "no-kv-bytes":
        edited = profile_copy(d, profile, ("kv_bytes_per_token = 524288\n", ""))
        path.write_text(path.read_text().replace(FIXED, edited))
    code, _, err = cli("run", path, "--quiet", "--out", out)
    assert_one_line_error(code, err, "speculation.adaptive.free_draft_memory: true needs the KV bytes per token")
    assert needle in err
    assert not out.exists()
    assert_no_partial_output(d)


def test_free_draft_memory_runs_on_a_measured_profile(d: Path) -> None:
    """On a shipped profile (its draft llama-68m's shape known) free_draft_memory runs and records K."""
    import polars as pl

    out = d / "free-ran"
    path = scenario(d, FREE, name="free_ok")
    path.write_text(path.read_text().replace(FIXED, '"h100-llama2-7b"').replace("[[scheduler]]",
                                                                                 BATCHED + "[[scheduler]]"))
    code, _, err = cli("run", path, "--quiet", "--out", out)
    assert code == 0, err
    stats = pl.read_parquet(out / "engine_stats.parquet")
    assert 0 <= stats["sd_off_share"][0] <= 1 and 0 <= stats["k_mean"][0] <= 6


BATCHED = "\n[engine]\nbatching = \"continuous\"\nmax_batch = 4\n"


@pytest.mark.parametrize("adaptive, batched, k_means", [
    ('{ kind = "batch-table", table = [[1, 2], [3, 1]] }', False, {2.0}),  # batch 1: the table's batch-1 row
    ('{ kind = "off-under-load", batch = 1 }', False, {0.0}),
    ('{ kind = "off-under-load", batch = 2 }', True, None),
    ('{ kind = "goodput", k_max = 3 }', True, None),
    ('{ kind = "goodput", k_max = 3, per_request = true }', True, None),
    ('{ kind = "goodput", k_max = 3 }', False, None),  # batch 1: K per step from the step table
])
def test_adaptive_runs_and_records_k(d: Path, adaptive: str, batched: bool, k_means: set | None) -> None:
    """A run under `adaptive` writes each request's mean K and the engine's K statistics."""
    import polars as pl

    out = d / f"ran-{abs(hash((adaptive, batched)))}"
    path = scenario(d, adaptive, name="runs")
    if batched:
        path.write_text(path.read_text().replace("[[scheduler]]", BATCHED + "[[scheduler]]"))
    code, _, err = cli("run", path, "--quiet", "--out", out)
    assert code == 0, err
    req = pl.read_parquet(out / "requests.parquet")
    stats = pl.read_parquet(out / "engine_stats.parquet")
    k_mean = req["k_mean"].drop_nulls()
    assert k_mean.len() > 0 and k_mean.min() >= 0 and k_mean.max() <= 6
    if k_means is not None:
        assert set(k_mean.to_list()) == k_means
    assert 0 <= stats["sd_off_share"][0] <= 1 and 0 <= stats["k_mean"][0] <= 6
    if "goodput" in adaptive:
        assert k_mean.max() <= 3 and stats["k_mean"][0] <= 3
