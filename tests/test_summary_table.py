"""The run summary table never truncates a number: on a terminal too narrow for it, it is split in two."""

from __future__ import annotations

import io

import polars as pl
from rich.console import Console

from lapsbench.results.render import print_summary

ROW = {"scheduler": "laps-sd-global", "jct_mean_s": 93.0834, "jct_mean_ci95_s": 0.5104, "jct_p50_s": 1.2251,
       "jct_p99_s": 93.0831, "ttft_mean_s": 0.0351, "ttft_p99_s": 14.2161, "tpot_mean_s": 0.02223,
       "throughput_rps": 0.96, "throughput_tok_s": 244.2}


def _render(width: int) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    print_summary(pl.DataFrame([ROW, {**ROW, "scheduler": "fcfs", "jct_mean_s": 3.139}]), "title", console)
    return out.getvalue()


def test_narrow_terminal_gets_two_tables_with_every_number_whole() -> None:
    text = _render(80)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for cell in ("laps-sd-global", "93.083", "0.510", "1.225", "0.035", "14.216", "22.23", "0.96", "244",
                 "JCT p99 s", "TPOT mean ms", "tok/s"):
        assert cell in text, cell
    assert text.count("scheduler") == 2


def test_wide_terminal_gets_one_table() -> None:
    text = _render(160)
    assert text.count("scheduler") == 1 and "…" not in text
