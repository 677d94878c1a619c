"""The next study's search space: parameters that matter narrowed around the best trials, the rest fixed."""

from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lit_tuning.analysis.importance import MATTERS_SHARE, MIN_TOP_TRIALS
from lit_tuning.experiment.config import format_value, read_yaml
from lit_tuning.experiment.search_space import Candidates, Range, SearchSpace, load_search_space, same_value
from lit_tuning.files import atomic_write
from lit_tuning.mappings import plain
from lit_tuning.paths import BASE_CONFIG
from lit_tuning.sweep.trial_record import PARAM_PREFIX, best_first

TOP_FRACTION = 0.25  # the narrowed space spans the best quarter of completed trials


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """One thing to do next, and the evidence for it."""

    title: str
    why: str


def narrowed_space(
    space: SearchSpace,
    trials: pd.DataFrame,
    verdict_table: pd.DataFrame,
    *,
    study: str,
    direction: str,
    top_fraction: float = TOP_FRACTION,
) -> tuple[dict[str, Any], list[Recommendation]]:
    """The next study's search-space document: parameters that matter narrowed to the best trials, the rest fixed."""
    document = read_yaml(space.path)
    ranked = best_first(trials, direction=direction)
    top = ranked.head(max(MIN_TOP_TRIALS, math.ceil(top_fraction * len(ranked))))
    best = ranked.iloc[0] if len(ranked) else None
    verdict_of = dict(zip(verdict_table["param"], verdict_table["verdict"]))
    parameters: dict[str, Any] = {}
    overrides = dict((document.get("base") or {}).get("overrides") or {})
    notes = []
    for key, parameter in space.parameters.items():
        column = f"{PARAM_PREFIX}{key}"
        verdict = verdict_of.get(key, "unclear")
        original = document["parameters"][key]
        if verdict == "does not matter" and best is not None and column in trials:
            value = _space_value(parameter, best[column])
            overrides[key] = value
            notes.append(
                Recommendation(
                    f"Fix {key} = {format_value(value)}", _why(verdict_table, key, "fixed at the best trial's value")
                )
            )
        elif verdict == "matters" and column in top and top[column].notna().any():
            parameters[key] = _narrow(parameter, original, top[column].dropna().tolist())
            notes.append(
                Recommendation(
                    f"Narrow {key} to {_describe(parameters[key])}",
                    _why(verdict_table, key, f"the span of the best {len(top)} completed trials"),
                )
            )
        else:
            parameters[key] = original
    if not parameters:  # a study needs at least one parameter: keep the most important one as it was
        key = max(space.parameters, key=lambda k: float(verdict_table.set_index("param")["importance"].get(k, 0)))
        parameters[key] = document["parameters"][key]
        overrides.pop(key, None)
    return _next_document(space, document, parameters, overrides, study=study), notes


def _next_document(
    space: SearchSpace, document: dict[str, Any], parameters: dict, overrides: dict, *, study: str
) -> dict[str, Any]:
    """The narrowed space's YAML document: the original's settings, the new overrides and parameters."""
    next_document = {
        "name": f"{document.get('name', space.name)}-next",
        "description": f"Narrowed from study {study!r} on {datetime.date.today().isoformat()} by lit_tuning.report.",
        **{k: document[k] for k in ("strategy", "n_trials", "seed", "objective", "pruner") if k in document},
        "base": {
            "configs": list((document.get("base") or {}).get("configs") or [BASE_CONFIG]),
            "overrides": overrides,
        },
        "parameters": parameters,
    }
    # A grid cannot enumerate a continuous range: a narrowed range without a step is searched by TPE instead.
    if space.strategy in ("grid", "oat") and any("low" in spec and "step" not in spec for spec in parameters.values()):
        next_document["strategy"], next_document["n_trials"] = "tpe", space.n_trials
    return next_document


def _why(verdict_table: pd.DataFrame, key: str, action: str) -> str:
    row = verdict_table.set_index("param").loc[key]
    return (
        f"PED-ANOVA importance {row['importance']:.2f} (95% interval {row['low']:.2f}-{row['high']:.2f}; "
        f"threshold {MATTERS_SHARE}): {row['verdict']}; {action}"
    )


def _space_value(parameter: Candidates | Range, value: Any) -> Any:
    """The space's own spelling of a trial's value (a list candidate may be stored as its text)."""
    value = plain(value)
    if isinstance(parameter, Candidates):
        for candidate in parameter.values:
            if same_value(candidate, value) or format_value(candidate) == str(value):
                return candidate
    return value


def _narrow(parameter: Candidates | Range, original: dict[str, Any], values: list[Any]) -> dict[str, Any]:
    values = [plain(value) for value in values]
    if isinstance(parameter, Candidates):
        kept = [c for c in parameter.values if any(same_value(c, v) or format_value(c) == str(v) for v in values)]
        return {"candidates": kept} if kept else original
    low, high = min(values), max(values)
    # Widen by a tenth of the span on each side (in log space for log ranges) so the optimum is not on the edge.
    if parameter.log:
        margin = (math.log(high) - math.log(low)) * 0.1 or 0.1
        low, high = math.exp(math.log(low) - margin), math.exp(math.log(high) + margin)
    else:
        margin = (high - low) * 0.1 or (parameter.high - parameter.low) * 0.05
        low, high = low - margin, high + margin
    low, high = max(low, parameter.low), min(high, parameter.high)
    if parameter.step is not None:
        low = parameter.low + math.floor((low - parameter.low) / parameter.step) * parameter.step
        high = parameter.low + math.ceil((high - parameter.low) / parameter.step) * parameter.step
    if parameter.kind == "int":
        low, high = int(math.floor(low)), int(math.ceil(high))
    else:
        low, high = float(f"{low:.3g}"), float(f"{high:.3g}")  # readable bounds, still inside the original range
        low, high = max(low, parameter.low), min(high, parameter.high)
    if not low < high:
        return original
    narrowed = {key: original[key] for key in original if key not in ("low", "high")}
    return {"low": low, "high": high, **narrowed}


def _describe(spec: dict[str, Any]) -> str:
    if "candidates" in spec:
        return f"candidates {[format_value(value) for value in spec['candidates']]}"
    return f"[{spec['low']:.3g}, {spec['high']:.3g}]{' (log)' if spec.get('log') else ''}"


def write_space(document: dict[str, Any], path: Path, header: str = "") -> SearchSpace:
    """Write a search-space YAML atomically once load_search_space accepts it; return the loaded space."""
    text = header + yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=120)
    staging = path.with_name(f".{path.name}.check.yaml")
    atomic_write(staging, text)
    try:
        space = load_search_space(staging)  # refuse to leave a space behind that the sweep would refuse
    finally:
        staging.unlink(missing_ok=True)
    atomic_write(path, text)
    return dataclasses.replace(space, path=str(path))
