"""Which hyperparameters matter (importance with bootstrap uncertainty), and a narrowed space for the next study."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import yaml

from lit_tuning.experiment.config import format_value, read_yaml
from lit_tuning.experiment.search_space import Candidates, Range, SearchSpace, load_search_space, same_value
from lit_tuning.files import atomic_write
from lit_tuning.paths import BASE_CONFIG
from lit_tuning.sweep.trial_record import PARAM_PREFIX, param_columns

MATTERS_SHARE = 0.15  # a parameter matters when even its low bootstrap importance is >= 15% of the total
TOP_FRACTION = 0.25  # the narrowed space spans the best quarter of completed trials
MIN_TOP_TRIALS = 3
IMPORTANCE_COLUMNS = ["param", "evaluator", "importance", "mean", "low", "high", "n_trials", "n_resamples"]


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """One thing to do next, and the evidence for it."""

    title: str
    why: str


def evaluators(seed: int = 0) -> dict[str, optuna.importance.BaseImportanceEvaluator]:
    """PED-ANOVA (numpy only) always; fANOVA too where scikit-learn is installed (its random forest needs it)."""
    found: dict[str, optuna.importance.BaseImportanceEvaluator] = {}
    found["ped_anova"] = optuna.importance.PedAnovaImportanceEvaluator()
    if importlib.util.find_spec("sklearn") is not None:
        found["fanova"] = optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=seed)
    return found


def param_importances(study: optuna.Study, *, n_resamples: int = 20, seed: int = 0) -> pd.DataFrame:
    """Normalized importance of each parameter per evaluator, with a 95% interval over bootstrap resamples of trials."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    names = sorted({name for trial in trials for name in trial.params})
    varied = [name for name in names if len({format_value(t.params.get(name)) for t in trials}) > 1]
    if len(trials) < 4 or not varied:
        return pd.DataFrame(columns=IMPORTANCE_COLUMNS)
    rng = np.random.default_rng(seed)
    samples = [trials] + [[trials[i] for i in rng.integers(0, len(trials), len(trials))] for _ in range(n_resamples)]
    rows = []
    for name, evaluator in evaluators(seed).items():
        if name == "ped_anova":
            # Optuna's default top 10% needs >= 20 trials to hold 2; small studies use their best 3 trials instead.
            quantile = min(0.5, max(0.1, MIN_TOP_TRIALS / len(trials)))
            evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per resample is noise
        try:
            results = [_importances(study.direction, sample, varied, evaluator) for sample in samples]
        finally:
            optuna.logging.set_verbosity(verbosity)
        for param in varied:
            resampled = np.array([result.get(param, 0.0) for result in results[1:]])
            rows.append(
                {
                    "param": param,
                    "evaluator": name,
                    "importance": results[0].get(param, 0.0),
                    "mean": float(resampled.mean()),
                    "low": float(np.quantile(resampled, 0.025)),
                    "high": float(np.quantile(resampled, 0.975)),
                    "n_trials": len(trials),
                    "n_resamples": n_resamples,
                }
            )
    return pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS).sort_values(
        ["evaluator", "importance"], ascending=[True, False], ignore_index=True
    )


def _importances(
    direction: optuna.study.StudyDirection,
    trials: list[optuna.trial.FrozenTrial],
    params: list[str],
    evaluator: optuna.importance.BaseImportanceEvaluator,
) -> dict[str, float]:
    resample = optuna.create_study(direction=direction)  # in memory: the real storage is never written
    resample.add_trials(trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and degenerate-sample warnings, once per resample
        scores = optuna.importance.get_param_importances(resample, evaluator=evaluator, params=params)
    return {key: 0.0 if math.isnan(value) else float(value) for key, value in scores.items()}


def verdicts(importances: pd.DataFrame) -> pd.DataFrame:
    """Per parameter: matters (low bound >= MATTERS_SHARE), does not matter (high bound below it), or unclear."""
    if importances.empty:
        return pd.DataFrame(columns=["param", "importance", "low", "high", "evaluator", "verdict"])
    # PED-ANOVA is the evaluator that needs no model fit; fANOVA is shown beside it in the figure.
    chosen = importances[importances["evaluator"] == "ped_anova"].copy()
    chosen["verdict"] = np.where(
        chosen["low"] >= MATTERS_SHARE,
        "matters",
        np.where(chosen["high"] < MATTERS_SHARE, "does not matter", "unclear"),
    )
    return chosen[["param", "importance", "low", "high", "evaluator", "verdict"]].reset_index(drop=True)


def narrowed_space(
    space: SearchSpace,
    trials: pd.DataFrame,
    verdict_table: pd.DataFrame,
    *,
    study: str,
    top_fraction: float = TOP_FRACTION,
) -> tuple[dict[str, Any], list[Recommendation]]:
    """The next study's search-space document: parameters that matter narrowed to the best trials, the rest fixed."""
    document = read_yaml(space.path)
    complete = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()]
    top = complete.nlargest(max(MIN_TOP_TRIALS, math.ceil(top_fraction * len(complete))), "value")
    best = complete.loc[complete["value"].idxmax()] if len(complete) else None
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
    if space.strategy in ("grid", "oat") and any("low" in spec and "step" not in spec for spec in parameters.values()):
        next_document["strategy"], next_document["n_trials"] = "tpe", space.n_trials
    return next_document, notes


def _why(verdict_table: pd.DataFrame, key: str, action: str) -> str:
    row = verdict_table.set_index("param").loc[key]
    return (
        f"PED-ANOVA importance {row['importance']:.2f} (95% bootstrap interval {row['low']:.2f}-{row['high']:.2f}; "
        f"threshold {MATTERS_SHARE}): {row['verdict']}; {action}"
    )


def _space_value(parameter: Candidates | Range, value: Any) -> Any:
    """The space's own spelling of a trial's value (a list candidate may be stored as its text)."""
    value = _python(value)
    if isinstance(parameter, Candidates):
        for candidate in parameter.values:
            if same_value(candidate, value) or format_value(candidate) == str(value):
                return candidate
    return value


def _python(value: Any) -> Any:
    """A pandas/numpy scalar as the plain Python value YAML and the CLI understand."""
    return value.item() if isinstance(value, np.generic) else value


def _narrow(parameter: Candidates | Range, original: dict[str, Any], values: list[Any]) -> dict[str, Any]:
    values = [_python(value) for value in values]
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


def params_of(trials: pd.DataFrame) -> list[str]:
    """The dotted parameter keys of a trials table."""
    return [column[len(PARAM_PREFIX) :] for column in param_columns(trials)]
