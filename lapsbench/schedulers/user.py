"""Schedulers written by users: `name = "my_policies.py:ShortestPredicted"` (a file, relative to the
scenario) or `"package.module:Class"`, run compiled like a built-in one.

The class is checked like a built-in (parameters, then `key` / `observe` / `prerank` on the run's own
requests before any engine runs; one line naming the file and what is wrong). It then runs on generated
copies of the engine modules: the engine module's source with its one line
`from lapsbench.schedulers import dispatch` replaced by an import of a generated dispatch module that calls
the user's functions. The copies are written once, atomically, under the lapsbench cache directory with a
name that hashes everything they depend on (the engine module's source, the user's file, the class name,
the lapsbench and numba versions), so numba's disk cache (keyed by file and modification time) stays valid
and a second process reuses the compiled engine; any change gives a new name."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from lapsbench.errors import LapsbenchError

DISPATCH_LINE = "from lapsbench.schedulers import dispatch\n"
FUNCTIONS = {"key": ("P", "R", "i"), "observe": ("P", "R", "served", "m", "end"),
             "prerank": ("P", "R", "active", "na", "now")}


def cache_dir() -> Path:
    """Where generated modules live: $XDG_CACHE_HOME/lapsbench/schedulers (default ~/.cache/...)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lapsbench" / "schedulers"


def split_reference(name: str) -> tuple[str, str]:
    """("my_policies.py" or "package.module", "Class") of `name`."""
    target, _, cls = name.rpartition(":")
    return target, cls


def resolve_reference(name: str, base_dir: str | os.PathLike | None) -> str:
    """A file reference made absolute against the scenario's directory (a module reference unchanged)."""
    target, cls = split_reference(name)
    if not target.endswith(".py") or Path(target).is_absolute():
        return name
    return f"{(Path(base_dir or '.') / target).resolve()}:{cls}"


def load_module(target: str, where: str):
    """The user's module: a file (loaded under a name that hashes its path) or an importable module."""
    if not target.endswith(".py"):
        try:
            return importlib.import_module(target)
        except Exception as exc:  # noqa: BLE001  (any error of the user's code is one line)
            raise LapsbenchError(f"{where}.name: cannot import {target!r}: {type(exc).__name__}: {exc}") from None
    path = Path(target).resolve()
    if not path.is_file():
        raise LapsbenchError(f"{where}.name: {target}: no such scheduler file")
    mod_name = "lapsbench_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        del sys.modules[mod_name]
        line = getattr(exc, "lineno", None) or _line_of(exc, path)
        at = f" (line {line})" if line else ""
        raise LapsbenchError(f"{where}.name: {path}{at}: cannot load it: {type(exc).__name__}: {exc}") from None
    return module


def _line_of(exc: BaseException, path: Path) -> int | None:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def load_user_class(name: str, where: str = "scheduler", base_dir: Any = None) -> type:
    """The class `name` refers to, checked for the scheduler interface (one line naming what is wrong)."""
    from lapsbench.schedulers.base import Scheduler

    target, cls_name = split_reference(resolve_reference(name, base_dir))
    module = load_module(target, where)
    source = getattr(module, "__file__", target)
    cls = getattr(module, cls_name, None)
    if not isinstance(cls, type):
        raise LapsbenchError(f"{where}.name: {source}: no class {cls_name!r}")
    if not issubclass(cls, Scheduler):
        raise LapsbenchError(f"{where}.name: {source}: {cls_name} must subclass lapsbench.schedulers.Scheduler")
    if not isinstance(cls.name, str) or not cls.name:
        raise LapsbenchError(f"{where}.name: {source}: {cls_name} has no name (set name = \"my-scheduler\")")
    if cls.pack is Scheduler.pack:
        raise LapsbenchError(f"{where}.name: {source}: {cls_name} has no pack(self, state) method")
    for fn, params in FUNCTIONS.items():
        f = getattr(cls, fn, None)
        if f is None:
            if fn == "key":
                raise LapsbenchError(f"{where}.name: {source}: {cls_name} has no key(P, R, i)")
            continue
        if not hasattr(f, "py_func"):
            raise LapsbenchError(f"{where}.name: {source}: {cls_name}.{fn} must be a @staticmethod compiled with "
                                 "@numba.njit")
        got = tuple(inspect.signature(f.py_func).parameters)
        if len(got) != len(params):
            raise LapsbenchError(f"{where}.name: {source}: {cls_name}.{fn}{_sig(got)} — expected "
                                 f"{fn}{_sig(params)}")
    return cls


def check_user_scheduler(policy: Any, state: Any, where: str) -> None:
    """Pack `policy` on the run's first requests and compile its functions through the step-by-step module,
    so that a wrong field, type or return value is one line before any engine runs."""
    import numpy as np

    from lapsbench.schedulers.stepwise import Bound

    cls = type(policy)
    source = f"{getattr(sys.modules[cls.__module__], '__file__', cls.__module__)}: {cls.__name__}"
    try:
        bound = Bound(policy, state)
    except LapsbenchError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise LapsbenchError(f"{where}: {source}.pack failed: {type(exc).__name__}: {exc}") from None
    first = np.arange(min(state.n, 1), dtype=np.int64)
    for fn, call in (("key", lambda: bound.keys(first, 0.0, True)), ("observe", lambda: bound.observe(first, 0.0))):
        try:
            call()
        except Exception as exc:  # noqa: BLE001  (numba's typing errors are pages long: one line of it)
            raise LapsbenchError(f"{where}: {source}.{fn} (or prerank) does not compile: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """The informative line of a numba typing error."""
    text = str(exc)
    for line in text.splitlines():
        line = line.strip()
        if "must return" in line:
            return line[line.index("a scheduler's key"):] if "a scheduler's key" in line else line
    skip = ("Failed in", "During:", "File ", "- Resolution failure", "Resolution failure", "No implementation",
            "This error may", "^", "<source", "Note", "The", "Rejected", "- Of which")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(skip)]
    first = re.sub(r"\x1b\[[0-9;]*m", "", lines[0] if lines else type(exc).__name__)
    return re.sub(r" of type (\w+)\(.*\)$", r" of \1", first)[:300]


def _sig(names: tuple[str, ...]) -> str:
    return "(" + ", ".join(names) + ")"


def is_user(scheduler: Any) -> bool:
    from lapsbench.schedulers.builtin import BUILTIN

    return type(scheduler) not in BUILTIN


# ------------------------------------------------------------------------------------- generated modules
def _dispatch_source(cls: type) -> str:
    """The generated dispatch module: the contract's functions calling the user's (`code` ignored)."""
    module = sys.modules[cls.__module__]
    path = getattr(module, "__file__", "")
    if module.__name__.startswith("lapsbench_user_"):
        load = f"_user = load_module({path!r}, 'scheduler')"
    else:
        load = f"_user = importlib.import_module({module.__name__!r})"
    observe = "_cls.observe(P, R, served, m, end)" if hasattr(cls, "observe") else "False"
    prerank = "_cls.prerank(P, R, active, na, now)" if hasattr(cls, "prerank") else "False"
    observe, prerank = observe.replace("_cls.", "_user_"), prerank.replace("_cls.", "_user_")
    return f'''"""Generated by lapsbench.schedulers.user for {module.__name__}.{cls.__name__} ({path})."""
import importlib  # noqa: F401

from numba import njit

from lapsbench.schedulers.dispatch import key_less, three  # noqa: F401
from lapsbench.schedulers.user import load_module  # noqa: F401

{load}
_cls = _user.{cls.__name__}
_user_key = _cls.key
_user_observe = getattr(_cls, "observe", None)
_user_prerank = getattr(_cls, "prerank", None)
_OBSERVES = {hasattr(cls, "observe")}
_PRERANKS = {hasattr(cls, "prerank")}
_STATIC = {bool(cls.static_keys)}


@njit(cache=True)
def key(code, P, R, i):
    return three(_user_key(P, R, i))


@njit(cache=True)
def observe(code, P, R, served, m, end):
    return {observe}


@njit(cache=True)
def prerank(code, P, R, active, na, now):
    return {prerank}


@njit(cache=True)
def observes(code):
    return _OBSERVES


@njit(cache=True)
def ranks_with_side_effects(code):
    return _PRERANKS


@njit(cache=True)
def keys_static(code):
    return _STATIC
'''


def _write_once(path: Path, text: str) -> None:
    """Write `text` to `path` atomically unless it exists (its modification time must not change)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


_GENERATED: dict[tuple[str, type], Any] = {}


def generated_module(engine_module: str, cls: type):
    """`engine_module` (e.g. "lapsbench.engine_compiled") compiled against the user's class `cls`."""
    if (engine_module, cls) not in _GENERATED:
        _GENERATED[engine_module, cls] = _generate(engine_module, cls)
    return _GENERATED[engine_module, cls]


def _generate(engine_module: str, cls: type):
    import numba

    import lapsbench

    engine = importlib.import_module(engine_module)
    engine_source = Path(engine.__file__).read_text()
    if engine_source.count(DISPATCH_LINE) != 1:
        raise RuntimeError(f"{engine_module} must bind the dispatch by exactly one line {DISPATCH_LINE.strip()!r}")
    user_file = getattr(sys.modules[cls.__module__], "__file__", None)
    dispatch_text = _dispatch_source(cls)
    digest = hashlib.sha256()
    for part in (engine_source, dispatch_text, Path(user_file).read_bytes() if user_file else b"", cls.__qualname__,
                 lapsbench.__version__, numba.__version__):
        digest.update(part if isinstance(part, bytes) else part.encode())
    tag = digest.hexdigest()[:16]
    dispatch_name = f"lapsbench_gen_{tag}_dispatch"
    name = f"lapsbench_gen_{tag}_{engine_module.rsplit('.', 1)[-1]}"
    if name in sys.modules:
        return sys.modules[name]
    folder = cache_dir()
    _write_once(folder / f"{dispatch_name}.py", dispatch_text)
    _write_once(folder / f"{name}.py", engine_source.replace(DISPATCH_LINE, f"import {dispatch_name} as dispatch\n"))
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    return importlib.import_module(name)


def code_and_module(scheduler: Any, engine_module: str) -> tuple[int, Any]:
    """(dispatch code, engine module) to run `scheduler` on: the module itself for a built-in; for a
    user's scheduler, code 0 (ignored) and the generated copy."""
    if not is_user(scheduler):
        from lapsbench.schedulers.dispatch import code_of

        return code_of(scheduler), importlib.import_module(engine_module)
    return 0, generated_module(engine_module, type(scheduler))
