"""The package layout of issue 17: configuration and results modules import without numba (and without
matplotlib until a plot is drawn); results/ never imports run/ or the engines; no module imports itself back
through others; and the subpackages import only downward in the pipeline's order (docs/architecture.md)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LIGHT = ("lapsbench.config.toml", "lapsbench.config.scenario", "lapsbench.run.sweep", "lapsbench.run.compare",
         "lapsbench.results.comparison", "lapsbench.results.writer", "lapsbench.results.render_compare",
         "lapsbench.results.plots", "lapsbench.results.validate", "lapsbench.schedulers.builtin")


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
        upward = {m for m in _imports(path) if m.startswith(("lapsbench.run", "lapsbench.engine"))}
        assert not upward, f"{path.name} imports {sorted(upward)}"


def test_comparison_tables_do_not_import_their_rendering() -> None:
    """The old cycle compare.py ↔ plots.py / report_compare.py: the tables module imports neither."""
    imports = _imports(REPO / "lapsbench" / "results" / "comparison.py")
    assert not {"lapsbench.results.plots", "lapsbench.results.render_compare", "lapsbench.results.writer"} & imports


# The pipeline's layers, lowest first: a module may import (at module level) only from its own layer's package
# or from a lower layer. Imports inside functions (lazy, for optional or heavy dependencies) are not counted.
LAYERS = [
    {"lapsbench", "lapsbench.errors", "lapsbench.fsutil", "lapsbench.units"},  # lapsbench/__init__.py: the version only
    {"lapsbench.resources", "lapsbench.progress"},
    {"lapsbench.config", "lapsbench.trace"},
    {"lapsbench.models"},
    {"lapsbench.schedulers"},
    {"lapsbench.engine"},
    {"lapsbench.results"},
    {"lapsbench.run", "lapsbench.calibrate"},
    {"lapsbench.replay"},
    {"lapsbench.cli", "lapsbench.__main__"},
]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (REPO / "lapsbench").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if "data" in parts:
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _module_level_imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """lapsbench modules imported at module level (not under `if TYPE_CHECKING:`, not inside functions)."""
    out: set[str] = set()
    body = list(ast.parse(path.read_text()).body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            body += node.body + node.orelse
        elif isinstance(node, ast.Try):
            body += node.body
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lapsbench"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lapsbench"))
    return {m for m in out if m in mods}


def _layer(module: str) -> int:
    package = ".".join(module.split(".")[:2])
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def test_no_import_cycle_and_no_upward_import() -> None:
    mods = _modules()
    graph = {m: _module_level_imports(p, mods) - {m} for m, p in mods.items()}
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))
    assert not upward, upward
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if d.startswith(m + "."):  # a package's __init__ importing its own submodules is not a cycle
                continue
            assert state.get(d) != 1, " -> ".join([*path, m, d])
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
