"""The package layout of issue 17 for config/, results/ and run/: configuration and results modules import
without numba (and without matplotlib until a plot is drawn), and results/ never imports run/."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LIGHT = ("lapsbench.config.toml", "lapsbench.scenario", "lapsbench.run.sweep", "lapsbench.run.compare",
         "lapsbench.results.comparison", "lapsbench.results.writer", "lapsbench.results.render_compare",
         "lapsbench.results.plots", "lapsbench.results.validate")


def test_config_and_results_modules_import_without_numba() -> None:
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in LIGHT)
            + "print(json.dumps(sorted(m for m in ('numba', 'matplotlib') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout) == []


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_results_never_import_run_or_engines() -> None:
    """Data flows one way: the run side writes results; results (records → tables → rendering) know
    nothing of how they were simulated."""
    for path in sorted((REPO / "lapsbench" / "results").glob("*.py")):
        upward = {m for m in _imports(path) if m.startswith(("lapsbench.run", "lapsbench.runner", "lapsbench.workload",
                                                             "lapsbench.engine", "lapsbench.batching"))}
        assert not upward, f"{path.name} imports {sorted(upward)}"


def test_comparison_tables_do_not_import_their_rendering() -> None:
    """The old cycle compare.py ↔ plots.py / report_compare.py: the tables module imports neither."""
    imports = _imports(REPO / "lapsbench" / "results" / "comparison.py")
    assert not {"lapsbench.results.plots", "lapsbench.results.render_compare", "lapsbench.results.writer"} & imports
