"""Scenario TOML → frozen dataclasses, validated once at the edge.

Every field carries a `help` text (reused by docs) and a check; an unknown key or a bad value raises
LapsbenchError naming the key path, the value and the valid choices. Relative paths in a scenario that
ships with lapsbench (lapsbench/data/scenarios) are resolved against its own directory; in any other
scenario against the current directory first, then the scenario file's directory."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lapsbench.config.toml import TOMLDecodeError, read_toml
from lapsbench.config.toml import loads as toml_loads
from lapsbench.errors import LapsbenchError
from lapsbench.resources import is_shipped


def _f(default: Any, help: str, check: Any = None, choices: tuple[str, ...] | None = None) -> Any:
    meta = {"help": help, "check": check, "choices": choices}
    if isinstance(default, (list, dict, tuple)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def _positive(v: float) -> str | None:
    return None if v > 0 else "a number > 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "a number >= 0"


def _at_least_one(v: int) -> str | None:
    return None if v >= 1 else "an integer >= 1"


# Hard bound on draft tokens per step. Speculative decoding uses k <= ~10 (EAGLE's draft trees verify <= ~64
# tokens); the shipped profiles were measured with up to 8 verify tokens (k = 7), and a far larger k prices
# steps by extrapolation and simulates for hours.
K_MAX = 32


def _draft_tokens(v: int) -> str | None:
    return None if 0 <= v <= K_MAX else f"an integer in 0..{K_MAX} (draft tokens per step)"


def _probability(v: float) -> str | None:
    return None if 0 <= v < 1 else "a probability in [0, 1)"


def _open_unit(v: float) -> str | None:
    return None if 0 < v < 1 else "a number in (0, 1)"


@dataclass(frozen=True)
class TraceSpec:
    path: str = _f("", "canonical Parquet trace (see docs/traces.md)")
    rate_scale: float = _f(1.0, ">1 compresses inter-arrival gaps (more load)", _positive)
    start_s: float = _f(0.0, "window start, seconds of trace time", _non_negative)
    duration_s: float = _f(0.0, "window length in trace seconds; 0 = to the end", _non_negative)
    max_requests: int = _f(0, "keep the first N requests of the window; 0 = all", _non_negative)
    synth: dict = _f({}, "instead of path: a synthetic trace drawn afresh for every replication, e.g. "
                     "{ requests = 50, rate = 2.0, output = \"csv:lengths.csv:tokens\", prompt = \"fixed:100\" } "
                     "(keys: requests, rate, arrival, cv, output, prompt, lengths; see docs/traces.md)")


@dataclass(frozen=True)
class FixedProfileSpec:
    kind: str = _f("fixed", "fixed step-time profile (queueing checks)", choices=("fixed",))
    step_s: float = _f(0.01, "every decode/verify step takes exactly this long", _positive)
    draft_step_s: float = _f(0.0, "each draft forward takes this long", _non_negative)
    prefill_s_per_token: float = _f(0.0, "extra prefill time per prompt token", _non_negative)


@dataclass(frozen=True)
class ModelSpec:
    profile: str | FixedProfileSpec = _f("h100-llama2-7b", "profile name, TOML path, or a fixed-profile table")
    draft: str = _f("", "draft model in the profile (default: the profile's own)")
    scheduler_profile: str = _f("", "profile the schedulers estimate step times with (name or TOML path; default: "
                                "profile, which prices the steps): what a cost-aware policy believes, when it is not "
                                "the true cost — e.g. the profile a real replay's policies used")


@dataclass(frozen=True)
class FixedAcceptanceSpec:
    kind: str = _f("fixed", "every draft token accepted with probability alpha until the first rejection",
                   choices=("fixed",))
    alpha: float = _f(0.7, "per-token acceptance probability", _probability)
    use_trace_alpha: bool = _f(False, "take alpha per request from the trace's alpha column when present")


@dataclass(frozen=True)
class BetaAcceptanceSpec:
    kind: str = _f("beta", "per-request alpha ~ Beta(mean, concentration), optional drift within a request "
                   "(docs/acceptance.md)", choices=("beta",))
    mean: float = _f(0.7, "mean of the per-request acceptance probability", _open_unit)
    concentration: float = _f(20.0, "Beta concentration a + b (larger = requests more alike)", _positive)
    initial: float = _f(0.5, "warm-up: alpha at a request's first step, relaxing to its own value", _probability)
    warmup_steps: float = _f(0.0, "warm-up time constant in decode steps (exp(-s/warmup)); 0 = no warm-up",
                             _non_negative)
    ar_phi: float = _f(0.0, "AR(1) fluctuation around the request's alpha: step-to-step correlation",
                       _probability)
    ar_sigma: float = _f(0.0, "AR(1) fluctuation: stationary standard deviation (alpha units); 0 = none",
                         _non_negative)
    max_alpha: float = _f(0.99, "alpha is clipped to [0, max_alpha] after drift and noise", _open_unit)


@dataclass(frozen=True)
class EmpiricalAcceptanceSpec:
    kind: str = _f("empirical", "replay measured per-position acceptance lengths (docs/acceptance.md)",
                   choices=("empirical",))
    path: str = _f("", "acceptance records: JSONL (data.md format) or its Parquet conversion; \"\" = the shipped "
                   "SpecDecode-Bench records (lapsbench/data/acceptance/)")
    dataset: str = _f("sharegpt", "dataset of the records (sharegpt, cnn, instructcoder in the shipped file)")
    method: str = _f("eagle", "drafting method of the records (eagle, ngram in the shipped file)")
    mapping: str = _f("resample", "request → record: seeded resampling per replication, a trace column of "
                      "record indices, or the trace's own acc_len column", choices=("resample", "column", "trace"))
    column: str = _f("acceptance_record", "with mapping = \"column\": the trace column holding record indices")


ACCEPTANCE_KINDS: dict[str, type] = {"fixed": FixedAcceptanceSpec, "beta": BetaAcceptanceSpec,
                                     "empirical": EmpiricalAcceptanceSpec}


@dataclass(frozen=True)
class SpeculationSpec:
    k: int = _f(4, f"draft tokens per step, 0..{K_MAX}; 0 = plain decoding (no draft cost)", _draft_tokens)
    acceptance: Any = _f(FixedAcceptanceSpec(), "acceptance process table (kind = ...)")
    adaptive: Any = _f(None, "how K is chosen per step, k the maximum (docs/speculation.md); none: k every step")


@dataclass(frozen=True)
class EngineSpec:
    batching: str = _f("none", "none (batch size 1) | static | dynamic | continuous (see docs/batching.md)",
                       choices=("none", "static", "dynamic", "continuous"))
    max_batch: int = _f(64, "largest batch, in requests (batching = none uses 1)", _at_least_one)
    max_batch_tokens: int = _f(8192, "continuous batching: tokens per step (decode k+1 each, prefill chunks)",
                               _at_least_one)
    kv_capacity_tokens: int = _f(0, "KV-cache capacity in tokens; 0 = the profile's (unlimited if it has none)",
                                 _non_negative)
    preemption: str = _f("swap", "what a memory preemption costs: swap (KV to host and back) or recompute",
                         choices=("swap", "recompute"))
    block_size: int = _f(16, "KV-cache block size in tokens", _at_least_one)
    admission: str = _f("guarded", "continuous batching: when may a waiting request displace a lower-ranked "
                        "resident's KV? guarded: when the swap / recompute cost is at most admission_share of the "
                        "gain | greedy: whenever it needs the memory (docs/batching.md §3)",
                        choices=("guarded", "greedy"))
    admission_share: float = _f(0.05, "guarded admission: largest displacement cost, as a share of its gain",
                                _non_negative)


@dataclass(frozen=True)
class SchedulerSpec:
    name: str
    label: str
    params: dict[str, Any]


@dataclass(frozen=True)
class SloSpec:
    ttft_s: float = _f(0.0, "TTFT objective in seconds; 0 = none", _non_negative)
    tpot_s: float = _f(0.0, "TPOT objective in seconds; 0 = none", _non_negative)
    e2e_s: float = _f(0.0, "end-to-end latency objective in seconds; 0 = none", _non_negative)


@dataclass(frozen=True)
class OutputSpec:
    dir: str = _f("", "results directory; default results/<name>")


@dataclass(frozen=True)
class Scenario:
    name: str = _f("scenario", "a name for the results")
    seed: int = _f(0, "root seed of every random stream", _non_negative)
    replications: int = _f(1, "independent repetitions (acceptance and predictor streams differ)", _at_least_one)
    trace: TraceSpec = _f(TraceSpec(), "the workload")
    model: ModelSpec = _f(ModelSpec(), "the cost profile")
    speculation: SpeculationSpec = _f(SpeculationSpec(), "speculative decoding")
    engine: EngineSpec = _f(EngineSpec(), "the serving engine")
    scheduler: tuple[SchedulerSpec, ...] = _f((), "schedulers to compare, each [[scheduler]] name = ...")
    slo: SloSpec = _f(SloSpec(), "service-level objectives for goodput")
    output: OutputSpec = _f(OutputSpec(), "where results go")
    base_dir: str = _f("", "directory of the scenario file (set by the loader)")

    def resolve(self, path: str) -> Path:
        """A relative path from the scenario: next to a shipped scenario (the current directory has no say);
        otherwise the current directory first, then the scenario's dir."""
        p = Path(path)
        if p.is_absolute() or not self.base_dir:
            return p
        if is_shipped(self.base_dir):
            return (Path(self.base_dir) / p).resolve()
        if p.exists():
            return p
        alt = Path(self.base_dir) / p
        return alt if alt.exists() else p

    @property
    def out_dir(self) -> Path:
        return Path(self.output.dir or f"results/{self.name}")


# ------------------------------------------------------------------------------------------- parsing

def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(t, str(t))


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise LapsbenchError(f"{where}: {value!r} — expected a finite number")
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise LapsbenchError(f"{where}: {value!r} has the wrong type — expected {_type_name(type(default))}")
    return value


def parse_table(cls: type, table: Any, where: str, skip: tuple[str, ...] = ()) -> Any:
    """Build dataclass `cls` from a TOML table, checking every key."""
    if not isinstance(table, dict):
        raise LapsbenchError(f"{where}: {table!r} — expected a table")
    fields_ = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    for key in table:
        if key not in fields_:
            raise LapsbenchError(f"{where}.{key}: unknown key; valid keys: {', '.join(sorted(fields_))}")
    values = {}
    for name, f in fields_.items():
        if name not in table:
            continue
        path = f"{where}.{name}" if where else name
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = _coerce(table[name], default, path)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise LapsbenchError(f"{path}: {value!r} — expected one of {list(choices)}")
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise LapsbenchError(f"{path}: {value!r} — expected {problem}")
        values[name] = value
    return cls(**values)


def _parse_acceptance(table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise LapsbenchError(f"{where}: {table!r} — expected a table like {{ kind = \"fixed\", alpha = 0.7 }}")
    kind = table.get("kind", "fixed")
    if kind not in ACCEPTANCE_KINDS:
        raise LapsbenchError(f"{where}.kind: {kind!r} — expected one of {sorted(ACCEPTANCE_KINDS)}")
    return parse_table(ACCEPTANCE_KINDS[kind], table, where)


SYNTH_KEYS = {"requests": int, "rate": float, "arrival": str, "cv": float, "output": str, "prompt": str,
              "lengths": str}


def _check_synth(table: Any) -> None:
    if not isinstance(table, dict):
        raise LapsbenchError(f"trace.synth: {table!r} — expected a table like {{ requests = 50, rate = 2.0 }}")
    for key, value in table.items():
        if key not in SYNTH_KEYS:
            raise LapsbenchError(f"trace.synth.{key}: unknown key; valid keys: {', '.join(sorted(SYNTH_KEYS))}")
        _coerce(value, SYNTH_KEYS[key](), f"trace.synth.{key}")
    for key in ("requests", "rate"):
        if key not in table:
            raise LapsbenchError(f"trace.synth.{key}: missing — expected requests = N and rate = R (per second)")
    if table["requests"] < 1:
        raise LapsbenchError(f"trace.synth.requests: {table['requests']!r} — expected an integer >= 1")
    if not table["rate"] > 0:
        raise LapsbenchError(f"trace.synth.rate: {table['rate']!r} — expected a number > 0")


def _parse_schedulers(raw: Any, base_dir: str = "") -> tuple[SchedulerSpec, ...]:
    from lapsbench.schedulers.base import is_user_reference, make_policy
    from lapsbench.schedulers.user import resolve_reference

    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise LapsbenchError("scheduler: expected at least one [[scheduler]] table with a name")
    specs = []
    labels = set()
    for i, table in enumerate(raw):
        where = f"scheduler[{i}]"
        if not isinstance(table, dict) or "name" not in table:
            raise LapsbenchError(f"{where}: expected a table with name = \"fcfs\" (or another scheduler)")
        params = {k: v for k, v in table.items() if k not in ("name", "label")}
        name = table["name"]
        if not isinstance(name, str):
            raise LapsbenchError(f"{where}.name: {name!r} — expected a scheduler name string")
        if is_user_reference(name):  # a user's file.py:Class, made absolute (runs from anywhere, sweep workers)
            name = resolve_reference(name, base_dir)
        policy = make_policy(name, params, where)  # validates name and parameters now, before any run
        label = table.get("label", policy.name)
        if not isinstance(label, str):
            raise LapsbenchError(f"{where}.label: {label!r} — expected a string")
        if label in labels:
            raise LapsbenchError(f"{where}.label: {label!r} appears twice; give each scheduler a distinct label")
        labels.add(label)
        specs.append(SchedulerSpec(name=name, label=label, params=params))
    return tuple(specs)


def parse_scenario(data: dict[str, Any], base_dir: str = "") -> Scenario:
    top = {k: v for k, v in data.items()}
    valid = {f.name for f in dataclasses.fields(Scenario)} - {"base_dir"}
    for key in top:
        if key not in valid:
            raise LapsbenchError(f"{key}: unknown key; valid keys: {', '.join(sorted(valid))}")
    trace = parse_table(TraceSpec, top.get("trace", {}), "trace")
    if not trace.path and not trace.synth:
        raise LapsbenchError("trace.path: missing — expected the path of a canonical Parquet trace (or trace.synth)")
    if trace.synth:
        _check_synth(trace.synth)
    model_raw = top.get("model", {})
    if not isinstance(model_raw, dict):
        raise LapsbenchError(f"model: {model_raw!r} — expected a table")
    profile = model_raw.get("profile", ModelSpec().profile)
    if isinstance(profile, dict):
        profile = parse_table(FixedProfileSpec, profile, "model.profile")
    elif not isinstance(profile, str):
        raise LapsbenchError(f"model.profile: {profile!r} — expected a profile name, a path, or a fixed table")
    model = parse_table(ModelSpec, {k: v for k, v in model_raw.items() if k != "profile"}, "model")
    model = dataclasses.replace(model, profile=profile)
    spec_raw = top.get("speculation", {})
    if not isinstance(spec_raw, dict):
        raise LapsbenchError(f"speculation: {spec_raw!r} — expected a table")
    plain = {k: v for k, v in spec_raw.items() if k not in ("acceptance", "adaptive")}
    speculation = parse_table(SpeculationSpec, plain, "speculation")
    if "acceptance" in spec_raw:
        speculation = dataclasses.replace(
            speculation, acceptance=_parse_acceptance(spec_raw["acceptance"], "speculation.acceptance"))
    if "adaptive" in spec_raw:
        from lapsbench.config.speculation import with_adaptive
        speculation = with_adaptive(speculation, spec_raw["adaptive"])
    scenario = parse_table(
        Scenario, {k: v for k, v in top.items() if k in ("name", "seed", "replications")}, "")
    return dataclasses.replace(
        scenario,
        trace=trace,
        model=model,
        speculation=speculation,
        engine=parse_table(EngineSpec, top.get("engine", {}), "engine"),
        scheduler=_parse_schedulers(top.get("scheduler"), base_dir),
        slo=parse_table(SloSpec, top.get("slo", {}), "slo"),
        output=parse_table(OutputSpec, top.get("output", {}), "output"),
        base_dir=base_dir,
    )


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Load and validate a scenario file, with `--set KEY=VALUE` overrides applied first (an error in an
    overridden key names `--set` instead of the file)."""
    path = Path(path)
    data = read_toml(path, "scenario", "; expected a TOML scenario")
    data, keys = apply_overrides(data, overrides)
    try:
        return parse_scenario(data, str(path.parent))
    except LapsbenchError as exc:
        raise LapsbenchError(f"--set {exc}" if blamed_keys(str(exc), keys) else f"{path}: {exc}") from None


# ------------------------------------------------------------------------------------ overrides (--set)

def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted `key` in a raw scenario dict (creating tables; an integer part indexes a list)."""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise LapsbenchError(f"{here}: expected a list index below {len(node)}")
            node = node[int(part)]
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, (dict, list)):
            raise LapsbenchError(f"{here}: is {nxt!r}, not a table, so {key!r} cannot be set inside it")
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise LapsbenchError(f"{key}: expected a list index below {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value


_BARE_WORD = re.compile(r"[^\s\"'\[\]{}=,#]+")
_KEY_PATH = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def parse_override(text: str) -> tuple[str, Any]:
    """`KEY.PATH=VALUE` → (key, value): the value is read as a TOML value (2, 0.3, true, "a b",
    [1, 2], { kind = "fixed", alpha = 0.6 }); a bare word that is not one (fcfs, traces/x.parquet) is
    a string."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not _KEY_PATH.fullmatch(key):
        raise LapsbenchError(f"--set: {text!r} — expected KEY.PATH=VALUE, e.g. speculation.k=2")
    try:
        return key, toml_loads(f"v = {raw}")["v"]
    except TOMLDecodeError:
        if _BARE_WORD.fullmatch(raw):
            return key, raw
        raise LapsbenchError(f"--set {key}: {raw!r} is not a TOML value — expected e.g. 2, 0.3, true, "
                             f"\"text\" or {{ kind = \"fixed\", alpha = 0.6 }}") from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """A copy of the raw scenario dict with every `KEY.PATH=VALUE` set, in order, and the keys set.
    Validation is left to `parse_scenario`, so an override is checked exactly as the same key in the TOML."""
    data = copy.deepcopy(data)
    keys = []
    for text in overrides:
        key, value = parse_override(text)
        try:
            set_key(data, key, value)
        except LapsbenchError as exc:
            raise LapsbenchError(f"--set {exc}") from None
        keys.append(key)
    return data, keys


def blamed_keys(message: str, keys: Sequence[str]) -> list[str]:
    """The override keys an error message (`key.path: ...`) is about: the key itself, a key inside it,
    or a table containing it. List indices as in `scheduler[0]` match `scheduler.0`; a path without
    indices (`scheduler.unit`, from a policy's own check) matches the key without its indices."""
    path = re.sub(r"\[(\d+)\]", r".\1", message.split(":", 1)[0].strip())

    def about(p: str, k: str) -> bool:
        return p == k or p.startswith(k + ".") or k.startswith(p + ".")

    def unindexed(k: str) -> str:
        return re.sub(r"\.\d+(?=\.|$)", "", k)

    return [k for k in keys if about(path, k) or about(unindexed(path), unindexed(k))]


# ------------------------------------------------------------------------------------------- writing

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if dataclasses.is_dataclass(v):
        return _toml_value(dataclasses.asdict(v))
    raise TypeError(f"cannot write {v!r} as TOML")


def scenario_to_toml(s: Scenario) -> str:
    """The resolved scenario (every default filled in), loadable again with `load_scenario`."""
    lines = [f"name = {_toml_value(s.name)}", f"seed = {s.seed}", f"replications = {s.replications}", ""]
    for section in ("trace", "model", "speculation", "engine", "slo", "output"):
        lines.append(f"[{section}]")
        table = getattr(s, section)
        lines += [f"{f.name} = {_toml_value(v)}" for f in dataclasses.fields(table)
                  if (v := getattr(table, f.name)) is not None]  # None: an optional table left out
        lines.append("")
    for sched in s.scheduler:
        lines.append("[[scheduler]]")
        lines.append(f"name = {_toml_value(sched.name)}")
        if sched.label != sched.name:
            lines.append(f"label = {_toml_value(sched.label)}")
        for key, value in sched.params.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
