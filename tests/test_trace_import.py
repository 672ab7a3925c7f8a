"""Importers: one good fixture per format, one failure per format and kind (each a one-line message naming
file, line, column and value, with nothing written), CLI exit codes, and Azure == Vidur equivalence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lapsbench.errors import LapsbenchError
from lapsbench.trace.importers import ImportOptions, detect_format, import_trace
from lapsbench.trace.schema import read_trace
from lapsbench.trace.synth import synth_trace

from cli_helpers import lapsbench

ROOT = Path(__file__).resolve().parents[1]
RAW = Path("/work/shared/traces/raw")

AZURE_2023 = ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
              "2023-11-16 18:15:50.9951690,396,109\n2023-11-16 18:15:50.9951690,879,55\n")
AZURE_2024 = ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-12 00:00:00+00:00,10,1\n"
              "2024-05-12 00:00:00.001163+00:00,20,2\n2024-05-12 00:00:01+00:00,30,3\n"
              "2024-05-12 02:00:01.5+02:00,40,4\n")
BURSTGPT = ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
            "5,ChatGPT,100,20,120,Conversation log\n6.5,GPT-4,50,0,50,Conversation log\n"
            "7,GPT-4,30,10,40,API log\n9,ChatGPT,10,5,15,API log\n")
MOONCAKE = ('{"timestamp": 1000, "input_length": 700, "output_length": 5, "hash_ids": [0, 1]}\n'
            '{"timestamp": 1000, "input_length": 600, "output_length": 6, "hash_ids": [0, 2]}\n\n'
            '{"timestamp": 3500, "input_length": 500, "output_length": 7, "hash_ids": []}\n')
VIDUR = "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,374,44\n4.314579,396,109\n"
LENGTHS = "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n74,918,992,0.08\n290,905,1195,0.32\n"


def write(tmp_path: Path, text: str, name: str = "raw.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_azure_2023(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    report = import_trace(write(tmp_path, AZURE_2023), out)
    df = read_trace(out)
    assert report.format == "azure" and df["request_id"].to_list() == [0, 1, 2]
    assert np.allclose(df["arrival_s"].to_numpy(), [0.0, 4.314579, 4.314579], atol=1e-9)
    assert df["prompt_tokens"].to_list() == [374, 396, 879] and df["output_tokens"].to_list() == [44, 109, 55]


def test_azure_2024_offsets_and_optional_fraction(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    import_trace(write(tmp_path, AZURE_2024), out)
    assert np.allclose(read_trace(out)["arrival_s"].to_numpy(), [0.0, 0.001163, 1.0, 1.5], atol=1e-9)


def test_burstgpt_drops_failed_and_passes_columns_through(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    report = import_trace(write(tmp_path, BURSTGPT), out)
    df = read_trace(out)
    assert report.dropped == {"failed": 1}
    assert df["arrival_s"].to_list() == [0.0, 2.0, 4.0] and df["request_id"].to_list() == [0, 1, 2]
    assert df["model"].to_list() == ["ChatGPT", "GPT-4", "ChatGPT"] and df["log_type"][2] == "API log"


def test_burstgpt_keep_failed_flags_them(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    import_trace(write(tmp_path, BURSTGPT), out, options=ImportOptions(keep_failed=True))
    df = read_trace(out)
    assert df["failed"].to_list() == [False, True, False, False] and df["output_tokens"].to_list() == [20, 1, 10, 5]


def test_burstgpt_model_filter(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    report = import_trace(write(tmp_path, BURSTGPT), out, options=ImportOptions(models=("GPT-4",)))
    df = read_trace(out)
    assert df["prompt_tokens"].to_list() == [30] and df["arrival_s"].to_list() == [0.0]
    assert report.dropped == {"other models": 2, "failed": 1}


def test_mooncake_keeps_ties_in_file_order_and_hash_ids(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    import_trace(write(tmp_path, MOONCAKE, "m.jsonl"), out)
    df = read_trace(out)
    assert df["arrival_s"].to_list() == [0.0, 0.0, 2.5] and df["prompt_tokens"].to_list() == [700, 600, 500]
    assert df["hash_ids"].to_list() == [[0, 1], [0, 2], []]


def test_vidur(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    import_trace(write(tmp_path, VIDUR), out)
    assert read_trace(out)["arrival_s"].to_list() == [0.0, 4.314579]


def test_lengths_arrivals_match_synth_of_the_same_seed(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    import_trace(write(tmp_path, LENGTHS), out, options=ImportOptions(rate=2.0, seed=7))
    df = read_trace(out)
    assert df["prompt_tokens"].to_list() == [74, 290] and df["output_tokens"].to_list() == [918, 905]
    assert df["arrival_s"].to_list() == synth_trace(2, 2.0, seed=7)["arrival_s"].to_list()


def test_lengths_needs_a_rate(tmp_path: Path) -> None:
    with pytest.raises(LapsbenchError, match="--rate"):
        import_trace(write(tmp_path, LENGTHS), tmp_path / "t.parquet")


def test_drop_zero(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    text = VIDUR + "5.0,0,3\n"
    with pytest.raises(LapsbenchError, match=r"line 4, column 'num_prefill_tokens': '0'.*--drop-zero"):
        import_trace(write(tmp_path, text), out)
    report = import_trace(write(tmp_path, text), out, options=ImportOptions(drop_zero=True))
    assert report.rows_written == 2 and report.dropped == {"zero tokens": 1}


@pytest.mark.parametrize(("text", "fmt"), [(AZURE_2023, "azure"), (BURSTGPT, "burstgpt"), (MOONCAKE, "mooncake"),
                                           (VIDUR, "vidur"), (LENGTHS, "lengths")])
def test_detect_format(tmp_path: Path, text: str, fmt: str) -> None:
    assert detect_format(write(tmp_path, text)) == fmt


AZ_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
BG_HEAD = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n5,ChatGPT,100,20,120,API log\n"
MC_HEAD = '{"timestamp": 1000, "input_length": 700, "output_length": 5}\n'
VI_HEAD = "arrived_at,num_prefill_tokens,num_decode_tokens\n1.0,374,44\n"
LE_HEAD = "num_prefill_tokens,num_decode_tokens\n10,20\n"

# (format, file text, line, column, value quoted in the message)
FAILURES = {
    "azure bad timestamp": ("azure", AZ_HEAD + "2023-11-16 18:61:00,10,2\n", 3, "TIMESTAMP", "2023-11-16 18:61:00"),
    "azure naive after offset": ("azure", AZURE_2024 + "2024-05-12 00:00:09,1,1\n", 6, "TIMESTAMP",
                                 "2024-05-12 00:00:09"),
    "azure negative tokens": ("azure", AZ_HEAD + "2023-11-16 18:15:47,-5,2\n", 3, "ContextTokens", "-5"),
    "azure non-integer tokens": ("azure", AZ_HEAD + "2023-11-16 18:15:47,5,2.5\n", 3, "GeneratedTokens", "2.5"),
    "azure backwards": ("azure", AZ_HEAD + "2023-11-16 18:15:40,5,2\n", 3, "TIMESTAMP", "2023-11-16 18:15:40"),
    "azure missing column": ("azure", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:47,5\n", 1, "GeneratedTokens", None),
    "azure empty cell": ("azure", AZ_HEAD + "\n2023-11-16 18:15:47,,2\n", 4, "ContextTokens", ""),
    "burstgpt bad timestamp": ("burstgpt", BG_HEAD + "x1,ChatGPT,1,1,2,API log\n", 3, "Timestamp", "x1"),
    "burstgpt negative tokens": ("burstgpt", BG_HEAD + "6,ChatGPT,1,-1,0,API log\n", 3, "Response tokens", "-1"),
    "burstgpt backwards": ("burstgpt", BG_HEAD + "4,ChatGPT,1,1,2,API log\n", 3, "Timestamp", "4"),
    "burstgpt missing column": ("burstgpt", "Timestamp,Model,Request tokens,Response tokens,Total tokens\n1,a,1,1,2\n",
                                1, "Log Type", None),
    "mooncake JSON syntax": ("mooncake", MC_HEAD + '{"timestamp": 2000, "input_length": 7\n', 2, None, None),
    "mooncake missing key": ("mooncake", MC_HEAD + '{"timestamp": 2000, "input_length": 7}\n', 2, "output_length",
                             None),
    "mooncake non-integer tokens": ("mooncake", MC_HEAD + '{"timestamp": 2000, "input_length": 7.5, '
                                    '"output_length": 1}\n', 2, "input_length", 7.5),
    "mooncake bad timestamp": ("mooncake", MC_HEAD + '{"timestamp": "soon", "input_length": 7, '
                               '"output_length": 1}\n', 2, "timestamp", "soon"),
    "mooncake backwards": ("mooncake", MC_HEAD + '{"timestamp": 999, "input_length": 7, "output_length": 1}\n', 2,
                           "timestamp", "999"),
    "vidur bad timestamp": ("vidur", VI_HEAD + "nan,1,1\n", 3, "arrived_at", "nan"),
    "vidur negative tokens": ("vidur", VI_HEAD + "2.0,1,-4\n", 3, "num_decode_tokens", "-4"),
    "vidur backwards": ("vidur", VI_HEAD + "0.5,1,1\n", 3, "arrived_at", "0.5"),
    "vidur too few fields": ("vidur", VI_HEAD + "2.0,1\n", 3, None, "2.0,1"),
    "lengths non-integer": ("lengths", LE_HEAD + "abc,3\n", 3, "num_prefill_tokens", "abc"),
    "lengths missing column": ("lengths", "num_prefill_tokens\n1\n", 1, "num_decode_tokens", None),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_import_failure_is_one_line_naming_file_line_column_value(name: str, tmp_path: Path) -> None:
    fmt, text, line, column, value = FAILURES[name]
    source, out = write(tmp_path, text, "raw.jsonl" if fmt == "mooncake" else "raw.csv"), tmp_path / "out.parquet"
    options = ImportOptions(rate=1.0) if fmt == "lengths" else None
    with pytest.raises(LapsbenchError) as err:
        import_trace(source, out, fmt, options)
    message = str(err.value)
    assert "\n" not in message and str(source) in message and f"line {line}" in message
    if column is not None:
        assert f"'{column}'" in message
    if value is not None:
        assert repr(value) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]


@pytest.mark.parametrize("fmt", ["azure", "burstgpt", "mooncake", "vidur", "lengths"])
def test_empty_file(fmt: str, tmp_path: Path) -> None:
    source = write(tmp_path, "", "empty.txt")
    with pytest.raises(LapsbenchError, match=r"empty\.txt: line 1: empty file"):
        import_trace(source, tmp_path / "o.parquet", fmt, ImportOptions(rate=1.0) if fmt == "lengths" else None)
    assert not (tmp_path / "o.parquet").exists()


def test_header_only_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LapsbenchError, match="no requests"):
        import_trace(write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n"), tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


def test_cli_bad_input_exits_2_with_one_line_and_no_output(tmp_path: Path) -> None:
    source, out = write(tmp_path, VI_HEAD + "0.5,1,1\n"), tmp_path / "out.parquet"
    result = lapsbench("trace", "import", str(source), "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "line 3" in result.stderr
    assert not out.exists()


def test_cli_import_ok(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    result = lapsbench("trace", "import", str(write(tmp_path, BURSTGPT)), "--out", str(out), "--model", "ChatGPT")
    assert result.returncode == 0, result.stderr
    assert read_trace(out)["model"].to_list() == ["ChatGPT", "ChatGPT"]


def test_cli_option_for_the_wrong_format_exits_2(tmp_path: Path) -> None:
    result = lapsbench("trace", "import", str(write(tmp_path, VIDUR)), "--out", str(tmp_path / "o.parquet"),
                       "--keep-failed")
    assert result.returncode == 2 and "burstgpt" in result.stderr


@pytest.mark.skipif(not RAW.is_dir(), reason="shared raw traces not present")
@pytest.mark.parametrize("kind", ["conv", "code"])
def test_azure_and_vidur_files_give_the_same_requests(kind: str, tmp_path: Path) -> None:
    a, v = tmp_path / "a.parquet", tmp_path / "v.parquet"
    import_trace(RAW / f"azure2023/AzureLLMInferenceTrace_{kind}.csv", a)
    import_trace(RAW / f"vidur/splitwise_{kind}.csv", v)
    da, dv = read_trace(a), read_trace(v)
    assert da.height == dv.height
    assert np.abs(da["arrival_s"].to_numpy() - dv["arrival_s"].to_numpy()).max() < 1e-3
    for column in ("request_id", "prompt_tokens", "output_tokens"):
        assert da[column].to_list() == dv[column].to_list()


def test_line_numbers_and_order_hold_across_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 64-byte blocks every few rows start a new batch: ids, blank-line counting and the
    backwards check must carry across batch boundaries."""
    from lapsbench.trace.importers import _stream

    monkeypatch.setattr(_stream, "BLOCK_BYTES", 64)
    rows = [f"{i * 0.5},{i + 1},{i + 2}" for i in range(40)]
    out = tmp_path / "t.parquet"
    import_trace(write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n" + "\n".join(rows) + "\n"), out)
    df = read_trace(out)
    assert df["request_id"].to_list() == list(range(40)) and df["prompt_tokens"].to_list() == list(range(1, 41))
    rows[30] = "1.0,5,5"
    text = "arrived_at,num_prefill_tokens,num_decode_tokens\n\n" + "\n".join(rows) + "\n"
    with pytest.raises(LapsbenchError, match=r"line 33, column 'arrived_at': '1.0'.*line 32 has '14.5'"):
        import_trace(write(tmp_path, text), out)
