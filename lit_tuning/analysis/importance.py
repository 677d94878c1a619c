"""Which hyperparameters matter: importance per evaluator with bootstrap intervals, and a verdict per parameter."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import warnings

import numpy as np
import optuna
import pandas as pd

from lit_tuning.experiment.config import format_value

MATTERS_SHARE = 0.15  # a parameter matters when even its low bootstrap importance is >= 15% of the total
MIN_TRIALS = 4  # fewer completed trials than this cannot split into "good" and "rest" for any evaluator
MIN_TOP_TRIALS = 3
IMPORTANCE_COLUMNS = ["param", "evaluator", "importance", "mean", "low", "high", "n_trials", "n_resamples"]
VERDICT_COLUMNS = ["param", "importance", "low", "high", "evaluator", "verdict"]


@dataclasses.dataclass(frozen=True)
class Importances:
    """Importance rows (IMPORTANCE_COLUMNS) and, where a number could not be computed, a sentence saying why."""

    table: pd.DataFrame
    notes: tuple[str, ...] = ()


def evaluators(seed: int = 0) -> dict[str, optuna.importance.BaseImportanceEvaluator]:
    """PED-ANOVA (numpy only) always; fANOVA too where scikit-learn is installed (its random forest needs it)."""
    found: dict[str, optuna.importance.BaseImportanceEvaluator] = {}
    found["ped_anova"] = optuna.importance.PedAnovaImportanceEvaluator()
    if importlib.util.find_spec("sklearn") is not None:
        found["fanova"] = optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=seed)
    return found


def usable_trials(study: optuna.Study) -> tuple[list[optuna.trial.FrozenTrial], list[str], list[str], str | None]:
    """Finite completed trials, the parameters they vary, notes on trials left out, why importance is undefined."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    trials = [trial for trial in complete if math.isfinite(trial.value)]
    notes = []
    if len(trials) < len(complete):
        notes.append(f"{len(complete) - len(trials)} completed trial(s) with a non-finite value are left out")
    names = sorted({name for trial in trials for name in trial.params})
    varied = [name for name in names if len({format_value(t.params.get(name)) for t in trials}) > 1]
    undefined = None
    if len(trials) < MIN_TRIALS:
        undefined = f"importance needs at least {MIN_TRIALS} completed trials with a finite value, not {len(trials)}"
    elif not varied:
        undefined = "no parameter took two different values among the completed trials"
    elif len({trial.value for trial in trials}) == 1:
        undefined = f"every completed trial has the same value ({trials[0].value:.4g}): there is no variance to explain"
    return trials, varied, notes, undefined


def param_importances(study: optuna.Study, *, n_resamples: int = 20, seed: int = 0) -> Importances:
    """Normalized importance of each parameter per evaluator, with a 95% interval over bootstrap resamples of trials."""
    trials, varied, notes, undefined = usable_trials(study)
    if undefined is not None:
        return Importances(pd.DataFrame(columns=IMPORTANCE_COLUMNS), (*notes, undefined))
    rng = np.random.default_rng(seed)
    samples = [trials] + [[trials[i] for i in rng.integers(0, len(trials), len(trials))] for _ in range(n_resamples)]
    rows = []
    for name, evaluator in evaluators(seed).items():
        if name == "ped_anova":
            # Optuna's default top 10% needs >= 20 trials to hold 2; small studies use their best 3 trials instead.
            quantile = min(0.5, max(0.1, MIN_TOP_TRIALS / len(trials)))
            evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
        results = _over_samples(study.direction, samples, varied, evaluator)
        if results[0] is None:
            notes.append(f"{name} importance not computed: {results[1]}")
            continue
        rows += _rows(name, results[0], results[1], varied, len(trials))
    table = pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS)
    table = table.sort_values(["evaluator", "importance"], ascending=[True, False], ignore_index=True)
    return Importances(table, tuple(notes))


def _over_samples(
    direction: optuna.study.StudyDirection,
    samples: list[list[optuna.trial.FrozenTrial]],
    params: list[str],
    evaluator: optuna.importance.BaseImportanceEvaluator,
) -> tuple[dict[str, float] | None, list[dict[str, float]] | str]:
    """(importances of the full sample, of each resample that could be computed), or (None, why not)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per resample is noise
    try:
        full = _importances(direction, samples[0], params, evaluator)
        # A resample can tie every value (fANOVA then raises "zero total variance"): it is skipped, and counted.
        resampled = [found for sample in samples[1:] if (found := _safe(direction, sample, params, evaluator))]
    except (RuntimeError, ValueError) as error:
        return None, f"{error} (the evaluator cannot separate the trials' values)"
    finally:
        optuna.logging.set_verbosity(verbosity)
    return full, resampled


def _safe(direction, sample, params, evaluator) -> dict[str, float] | None:  # noqa: ANN001 - as _importances
    try:
        return _importances(direction, sample, params, evaluator)
    except (RuntimeError, ValueError):
        return None


def _rows(name: str, full: dict, resampled: list[dict], params: list[str], n_trials: int) -> list[dict]:
    rows = []
    for param in params:
        values = np.array([result.get(param, 0.0) for result in resampled]) if resampled else np.array([np.nan])
        rows.append(
            {
                "param": param,
                "evaluator": name,
                "importance": full.get(param, 0.0),
                "mean": float(np.mean(values)),
                "low": float(np.quantile(values, 0.025)),
                "high": float(np.quantile(values, 0.975)),
                "n_trials": n_trials,
                "n_resamples": len(resampled),
            }
        )
    return rows


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
    # PED-ANOVA is the evaluator that needs no model fit; fANOVA is shown beside it in the figure.
    chosen = importances[importances["evaluator"] == "ped_anova"].copy()
    if chosen.empty:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    chosen["verdict"] = np.where(
        chosen["low"] >= MATTERS_SHARE,
        "matters",
        np.where(chosen["high"] < MATTERS_SHARE, "does not matter", "unclear"),
    )
    return chosen[VERDICT_COLUMNS].reset_index(drop=True)
