"""Search spaces: the YAML schema, its validation against the fit CLI before any compute, and its Optuna mapping."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import itertools
import math
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import optuna
from jsonargparse import Namespace

from lit_tuning.experiment.config import (
    ConfigError,
    Experiment,
    ResolvedConfig,
    check_config,
    compose,
    format_value,
    parse_args,
    read_yaml,
)
from lit_tuning.experiment.parameters import Candidates, Parameter, Range, is_int, is_number, same_value
from lit_tuning.mappings import plain
from lit_tuning.paths import BASE_CONFIG
from lit_tuning.train.metrics import get_metric, objective_metrics

STRATEGIES = ("grid", "oat", "random", "tpe", "gp", "qmc", "cmaes")
ENUMERATED = ("grid", "oat")  # strategies that run every point of a finite design, in a known order
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}
TOP_LEVEL_KEYS = ("name", "description", "objective", "strategy", "n_trials", "seed", "pruner", "base", "parameters")
PARAMETER_FIELDS = ("candidates", "low", "high", "log", "step", "type")
PRIMITIVES = (type(None), bool, int, float, str)  # what Optuna's categorical distributions store
# A grid/oat design is listed in memory and queued in the storage before the first trial: a 40^8 grid reached
# 22 GB. Past this many points (each a whole training run), a sampling strategy is the tool.
MAX_DESIGN_SIZE = 100_000


class SearchSpaceError(ValueError):
    """A search space that must not run: the message names the file, the key, the bad value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A validated study definition: what to vary, around which base experiment, how to search and what to optimize."""

    name: str
    path: str
    parameters: dict[str, Parameter]
    base: Experiment
    base_values: dict[str, Any]  # each parameter's value in the resolved base experiment (the OAT centre)
    metric: str
    direction: Literal["maximize", "minimize"]
    strategy: str
    n_trials: int | None
    seed: int
    pruner: str
    pruner_options: dict[str, Any]
    resolved_base: ResolvedConfig = dataclasses.field(compare=False, repr=False)  # base parsed once, for trials
    description: str = ""


def load_search_space(path: str | Path) -> SearchSpace:
    """Load and fully validate a search space file; nothing is trained, built or written."""
    try:
        document = read_yaml(path)
    except ConfigError as error:
        raise SearchSpaceError(str(error)) from None
    path = str(path)
    if not isinstance(document, dict):
        raise SearchSpaceError(f"{path}: top level = {document!r}; allowed: a mapping with keys {TOP_LEVEL_KEYS}")
    _check_fields(path, "", document, TOP_LEVEL_KEYS)
    base = _load_base(path, document.get("base", {}))
    raw_parameters = document.get("parameters")
    if not isinstance(raw_parameters, dict) or not raw_parameters:
        raise SearchSpaceError(
            f"{path}: parameters = {raw_parameters!r}; allowed: a non-empty mapping of dotted CLI keys to "
            "{candidates: [...]} or {low, high, log?, step?, type?}"
        )
    parameters = {key: _load_parameter(path, key, spec, base) for key, spec in raw_parameters.items()}
    metric, direction = _load_objective(path, document.get("objective", {}))
    strategy = document.get("strategy", "tpe")
    if strategy not in STRATEGIES:
        raise SearchSpaceError(f"{path}: strategy = {strategy!r} is unknown; allowed: {', '.join(STRATEGIES)}")
    pruner, pruner_options = _load_pruner(path, document.get("pruner", "none"))
    seed = document.get("seed", 0)
    if not is_int(seed):
        raise SearchSpaceError(f"{path}: seed = {seed!r}; allowed: an integer")
    name = document.get("name", Path(path).stem)
    space = SearchSpace(
        name=str(name),
        path=path,
        parameters=parameters,
        base=base.experiment,
        base_values={key: plain(base[key]) for key in parameters},
        metric=metric,
        direction=direction,
        strategy=strategy,
        n_trials=None,
        seed=seed,
        pruner=pruner,
        pruner_options=pruner_options,
        description=str(document.get("description", "")),
        resolved_base=base,
    )
    _check_strategy_fits(space)
    return dataclasses.replace(space, n_trials=_load_budget(space, document.get("n_trials")))


def _check_fields(path: str, where: str, mapping: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for field in mapping:
        if field not in allowed:
            raise SearchSpaceError(f"{path}: {where}{field!r} is not a known field; allowed: {', '.join(allowed)}")


def _load_base(path: str, spec: Any) -> ResolvedConfig:
    if not isinstance(spec, dict):
        raise SearchSpaceError(f"{path}: base = {spec!r}; allowed: a mapping with configs (list) and overrides")
    _check_fields(path, "base.", spec, ("configs", "overrides"))
    files = spec.get("configs", [BASE_CONFIG])
    overrides = spec.get("overrides", {}) or {}
    if not isinstance(files, list) or not files or not all(isinstance(item, str) for item in files):
        raise SearchSpaceError(f"{path}: base.configs = {files!r}; allowed: a non-empty list of config file paths")
    if not isinstance(overrides, dict):
        raise SearchSpaceError(f"{path}: base.overrides = {overrides!r}; allowed: a mapping of dotted keys to values")
    try:
        return compose(Experiment(tuple(files), dict(overrides)))
    except ConfigError as error:
        raise SearchSpaceError(f"{path}: base experiment is refused by `fit`: {error}") from None


def _load_parameter(path: str, key: Any, spec: Any, base: ResolvedConfig) -> Parameter:
    where = f"parameters.{key}"
    _check_key(path, key, base.namespace)
    if not isinstance(spec, dict):
        raise SearchSpaceError(
            f"{path}: {where} = {spec!r}; allowed: {{candidates: [...]}} or {{low, high, log?, step?, type?}}"
        )
    _check_fields(path, f"{where}.", spec, PARAMETER_FIELDS)
    if "candidates" in spec:
        if set(spec) != {"candidates"}:
            raise SearchSpaceError(
                f"{path}: {where} mixes candidates with {sorted(set(spec) - {'candidates'})}; "
                "allowed: either candidates or a range (low, high, log, step, type)"
            )
        return _load_candidates(path, key, spec["candidates"], base)
    return _load_range(path, key, spec, base)


def _check_key(path: str, key: Any, namespace: Namespace) -> None:
    section, _, _ = str(key).rpartition(".")
    known = isinstance(key, str) and key != "config" and key in namespace
    if known and not isinstance(namespace[key], Namespace):
        return
    # Suggest the keys of the nearest section that exists (the top level for an unknown section).
    while section and not (section in namespace and isinstance(namespace[section], Namespace)):
        section = section.rpartition(".")[0]
    siblings = namespace[section] if section else namespace
    prefix = f"{section}." if section else ""
    allowed = ", ".join(prefix + name for name in sorted(vars(siblings)) if name != "config")
    raise SearchSpaceError(
        f"{path}: parameters.{key}: {key!r} is not a value the fit CLI accepts; "
        f"allowed{' under ' + section if section else ''}: {allowed}"
    )


def _load_candidates(path: str, key: str, values: Any, base: ResolvedConfig) -> Candidates:
    where = f"parameters.{key}.candidates"
    if not isinstance(values, list) or not values:
        raise SearchSpaceError(f"{path}: {where} = {values!r}; allowed: a non-empty list of values")
    normalized, seen = [], {}
    for index, value in enumerate(values):
        checked = check_value(base, key, value, where=f"{path}: {where}[{index}]")
        text = format_value(checked)
        if text in seen:
            raise SearchSpaceError(
                f"{path}: {where}[{index}] = {value!r} repeats {where}[{seen[text]}]; allowed: distinct values"
            )
        seen[text] = index
        normalized.append(checked)
    return Candidates(tuple(normalized))


def _load_range(path: str, key: str, spec: dict[str, Any], base: ResolvedConfig) -> Range:
    where = f"parameters.{key}"
    for bound in ("low", "high"):
        value = spec.get(bound)
        if not is_number(value):
            raise SearchSpaceError(
                f"{path}: {where}.{bound} = {value!r}; allowed: a number (and set both low and high)"
            )
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    kind = spec.get("type", "int" if all(is_int(v) for v in (low, high, step) if v is not None) else "float")
    if kind not in ("int", "float"):
        raise SearchSpaceError(f"{path}: {where}.type = {kind!r}; allowed: int, float")
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{path}: {where}.log = {log!r}; allowed: true or false")
    if step is not None and (not is_number(step) or step <= 0):
        raise SearchSpaceError(f"{path}: {where}.step = {step!r}; allowed: a number > 0")
    if kind == "int":
        for field, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and not is_int(value):
                raise SearchSpaceError(f"{path}: {where}.{field} = {value!r}; allowed: an integer (type: int)")
    if low >= high:
        raise SearchSpaceError(f"{path}: {where}: low = {low!r} is not below high = {high!r}; allowed: low < high")
    if log and low <= 0:
        raise SearchSpaceError(f"{path}: {where}.low = {low!r} with log: true; allowed: low > 0 on a log scale")
    if log and step is not None and not (kind == "int" and step == 1):
        raise SearchSpaceError(
            f"{path}: {where}.step = {step!r} with log: true; allowed: no step on a log scale (int ranges: step 1)"
        )
    # Decimal on the written numbers, as Optuna checks it: 0.3 - 0.0 is 3 steps of 0.1, not 2.9999999999999996.
    if step is not None and (Decimal(str(high)) - Decimal(str(low))) % Decimal(str(step)) != 0:
        raise SearchSpaceError(
            f"{path}: {where}.step = {step!r} does not divide high - low = {high - low!r}; "
            "allowed: a step that fits a whole number of times"
        )
    cast = int if kind == "int" else float
    checked = Range(cast(low), cast(high), kind, log, None if step is None else cast(step))
    # The fit CLI judges both ends (an int key refuses 4.0, a Dropout key refuses 1.0).
    for label, value in (("low", checked.low), ("high", checked.high)):
        check_value(base, key, value, where=f"{path}: {where} ({label})")
    return checked


def check_value(base: ResolvedConfig, key: str, value: Any, *, where: str) -> Any:
    """Return the value as `fit` resolves it over the base experiment, or raise SearchSpaceError saying why not."""
    try:
        return plain(check_config(parse_args([f"--{key}={format_value(value)}"], base.namespace))[key])
    except ConfigError as error:
        reason = "; ".join(line.strip() for line in str(error).splitlines()[1:] if "is set " not in line)
        raise SearchSpaceError(f"{where} = {value!r} is refused by `fit`; allowed: {reason}") from None


def _load_objective(path: str, spec: Any) -> tuple[str, Literal["maximize", "minimize"]]:
    if isinstance(spec, str):
        spec = {"metric": spec}
    if not isinstance(spec, dict):
        raise SearchSpaceError(f"{path}: objective = {spec!r}; allowed: a mapping with metric and direction")
    _check_fields(path, "objective.", spec, ("metric", "direction"))
    objectives = {metric.name: metric for metric in objective_metrics()}
    allowed = ", ".join(objectives)
    name = spec.get("metric", "val/letter_position_accuracy")
    try:
        metric = get_metric(str(name))
    except ValueError:
        raise SearchSpaceError(f"{path}: objective.metric = {name!r} is not a registered metric; allowed: {allowed}")
    if metric.direction is None:
        raise SearchSpaceError(f"{path}: objective.metric = {name!r} is descriptive only; allowed: {allowed}")
    if metric.name not in objectives:
        raise SearchSpaceError(
            f"{path}: objective.metric = {name!r} is never reported during fit (test/* only by `test`, "
            f"model/* straight to the loggers), so every trial would end without a value; allowed: {allowed}"
        )
    direction = spec.get("direction", metric.direction)
    if direction != metric.direction:
        raise SearchSpaceError(
            f"{path}: objective.direction = {direction!r} contradicts the metric registry; "
            f"allowed for {name}: {metric.direction}"
        )
    return metric.name, metric.direction


def _load_pruner(path: str, spec: Any) -> tuple[str, dict[str, Any]]:
    spec = {"type": spec} if isinstance(spec, str) or spec is None else spec
    if not isinstance(spec, dict):
        raise SearchSpaceError(f"{path}: pruner = {spec!r}; allowed: a pruner name or {{type: <name>, <options>}}")
    kind, options = spec.get("type", "none"), {k: v for k, v in spec.items() if k != "type"}
    if kind not in PRUNERS:
        raise SearchSpaceError(f"{path}: pruner.type = {kind!r} is unknown; allowed: {', '.join(PRUNERS)}")
    accepted = tuple(inspect.signature(PRUNERS[kind]).parameters)
    _check_fields(path, "pruner.", options, accepted)
    try:
        PRUNERS[kind](**options)  # Optuna's own constructor checks the option values
        if kind == "hyperband" and not is_int(options.get("min_resource", 1)):
            raise ValueError("HyperbandPruner's min_resource is a number of steps (int >= 1)")
        if kind == "hyperband":  # HyperbandPruner defers its checks to its successive-halving brackets
            bracket_options = {k: v for k, v in options.items() if k in ("min_resource", "reduction_factor")}
            optuna.pruners.SuccessiveHalvingPruner(**bracket_options)
    except (TypeError, ValueError) as error:
        raise SearchSpaceError(
            f"{path}: pruner {kind} with options {options!r} is refused by Optuna: {error}; "
            f"allowed options: {', '.join(accepted) or 'none'}"
        ) from None
    return kind, options


def _check_strategy_fits(space: SearchSpace) -> None:
    for key, parameter in space.parameters.items():
        if space.strategy in ENUMERATED and isinstance(parameter, Range) and parameter.step is None:
            raise SearchSpaceError(
                f"{space.path}: parameters.{key} = a range without step under strategy {space.strategy}; "
                "allowed: candidates, or a range with step (grid and oat enumerate every point)"
            )
        if space.strategy == "cmaes" and isinstance(parameter, Candidates):
            raise SearchSpaceError(
                f"{space.path}: parameters.{key} = candidates {list(parameter.values)!r} under strategy cmaes; "
                "allowed: ranges only (CMA-ES has no categorical distribution; use tpe, gp or random)"
            )
    if space.strategy == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise SearchSpaceError(f"{space.path}: strategy = 'cmaes' needs the cmaes package; allowed: pip install cmaes")


def _load_budget(space: SearchSpace, n_trials: Any) -> int:
    if space.strategy in ENUMERATED:
        count = check_design_size(space)
        if n_trials is not None and n_trials != count:
            raise SearchSpaceError(
                f"{space.path}: n_trials = {n_trials!r} under strategy {space.strategy}, which runs every point; "
                f"allowed: omit n_trials or set it to {count}"
            )
        return count
    if not is_int(n_trials) or n_trials < 1:
        raise SearchSpaceError(
            f"{space.path}: n_trials = {n_trials!r} under strategy {space.strategy}; allowed: an integer >= 1"
        )
    return n_trials


def design_size(space: SearchSpace) -> int | None:
    """Return the number of points of a grid (full factorial) or oat design, computed without enumerating; else None."""
    if space.strategy == "grid":
        return math.prod(parameter.count() for parameter in space.parameters.values())
    if space.strategy == "oat":  # the centre, then each other value of one parameter at a time
        centre = space.base_values
        return 1 + sum(
            parameter.count() - int(_on_axis(parameter, centre[key])) for key, parameter in space.parameters.items()
        )
    return None


def _on_axis(parameter: Parameter, value: Any) -> bool:
    if isinstance(parameter, Range):
        return is_number(value) and parameter.contains(value)
    return any(same_value(value, candidate) for candidate in parameter.values)


def check_design_size(space: SearchSpace) -> int | None:
    """Return the design size, refusing a design too large to enumerate (each point is a whole training run)."""
    size = design_size(space)
    if size is not None and size > MAX_DESIGN_SIZE:
        axes = " x ".join(str(parameter.count()) for parameter in space.parameters.values())
        raise SearchSpaceError(
            f"{space.path}: strategy {space.strategy} has {size:,} points ({axes}); allowed: at most "
            f"{MAX_DESIGN_SIZE:,} (fewer candidates, a coarser step, or a sampling strategy such as tpe)"
        )
    return size


def enumerate_trials(space: SearchSpace) -> list[dict[str, Any]]:
    """Return every trial of a grid (full factorial) or oat (one-at-a-time around the base values) design, in order."""
    if space.strategy not in ENUMERATED:
        raise SearchSpaceError(
            f"{space.path}: strategy = {space.strategy!r} draws its trials; allowed for enumeration: grid, oat"
        )
    check_design_size(space)
    axes = {key: parameter.points() for key, parameter in space.parameters.items()}
    if space.strategy == "grid":
        return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    # One-at-a-time: the base point, then each other value of one parameter with the rest at their base values.
    centre = dict(space.base_values)
    trials = [centre]
    for key, values in axes.items():
        trials += [{**centre, key: value} for value in values if not same_value(value, centre[key])]
    return trials


def trial_count(space: SearchSpace) -> int:
    """Return how many trials a study runs: the exact design size for grid/oat, the budget for samplers."""
    size = design_size(space)
    if size is not None:
        return size
    assert space.n_trials is not None
    return space.n_trials
