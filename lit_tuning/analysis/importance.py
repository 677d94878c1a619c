"""Which hyperparameters matter: importance per evaluator with jackknife intervals, and a verdict per parameter."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import warnings
from collections.abc import Callable

import numpy as np
import optuna
import pandas as pd

from lit_tuning.experiment.config import format_value

MATTERS_SHARE = 0.15  # a parameter matters when even the low end of its interval is >= 15% of the total
MIN_TRIALS = 4  # fewer completed trials than this cannot split into "good" and "rest" for any evaluator
MIN_TOP_TRIALS = 3
# Each subsample leaves out a quarter of the trials. Bootstrap resamples (with replacement) repeat trials, which
# shifts PED-ANOVA's top-trials split: on 12-trial studies its estimate fell outside its own percentile interval.
LEFT_OUT_SHARE = 0.25
Z_95 = 1.959963984540054
EvaluatorFactory = Callable[[int], optuna.importance.BaseImportanceEvaluator]
IMPORTANCE_COLUMNS = ["param", "evaluator", "importance", "mean", "low", "high", "n_trials", "n_resamples"]
VERDICT_COLUMNS = ["param", "importance", "low", "high", "evaluator", "verdict"]


@dataclasses.dataclass(frozen=True)
class Importances:
    """Importance rows (IMPORTANCE_COLUMNS) and, where a number could not be computed, a sentence saying why."""

    table: pd.DataFrame
    notes: tuple[str, ...] = ()


def evaluators(seed: int = 0) -> dict[str, EvaluatorFactory]:
    """Per evaluator, a factory taking a number of trials: PED-ANOVA always, fANOVA where scikit-learn is installed."""
    found: dict[str, EvaluatorFactory] = {"ped_anova": _ped_anova}
    if importlib.util.find_spec("sklearn") is not None:  # fANOVA's random forest needs it
        found["fanova"] = lambda _: optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=seed)
    return found


def _ped_anova(n_trials: int) -> optuna.importance.BaseImportanceEvaluator:
    # Optuna's default top 10% needs >= 20 trials to hold 2; small samples use their best 3 trials instead. Set per
    # sample, so that a subsample's top set is its best 3 trials too, not a smaller share of fewer trials.
    quantile = min(0.5, max(0.1, MIN_TOP_TRIALS / n_trials))
    return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)


def subsamples(n: int, left_out: int, count: int, rng: np.random.Generator) -> list[list[int]]:
    """`count` distinct subsets of range(n) that each leave out `left_out` items, in order; all of them if fewer."""
    if math.comb(n, left_out) <= count:
        return [sorted(set(range(n)) - set(out)) for out in itertools.combinations(range(n), left_out)]
    found: set[tuple[int, ...]] = set()
    while len(found) < count:
        found.add(tuple(sorted(rng.choice(n, n - left_out, replace=False).tolist())))
    return [list(subset) for subset in sorted(found)]


def jackknife_se(values: np.ndarray, n: int, left_out: int) -> float:
    """Delete-d jackknife standard error of a statistic from its values on subsamples leaving out `left_out` of n."""
    if len(values) < 2:
        return math.nan
    # Shao & Wu (1989): var = (n - d) / (d * m) * sum((theta_s - mean)^2) over m subsamples; exact for all C(n, d).
    return math.sqrt((n - left_out) / (left_out * len(values)) * float(((values - values.mean()) ** 2).sum()))


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
    """Normalized importance of each parameter per evaluator, with a 95% delete-d jackknife interval over trials."""
    trials, varied, notes, undefined = usable_trials(study)
    if undefined is not None:
        return Importances(pd.DataFrame(columns=IMPORTANCE_COLUMNS), (*notes, undefined))
    left_out = max(1, round(LEFT_OUT_SHARE * len(trials)))
    subsets = subsamples(len(trials), left_out, n_resamples, np.random.default_rng(seed))
    samples = [trials] + [[trials[i] for i in subset] for subset in subsets]
    rows = []
    for name, evaluator in evaluators(seed).items():
        results = _over_samples(study.direction, samples, varied, evaluator)
        if results[0] is None:
            notes.append(f"{name} importance not computed: {results[1]}")
            continue
        rows += _rows(name, results[0], results[1], varied, len(trials), left_out)
    table = pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS)
    table = table.sort_values(["evaluator", "importance"], ascending=[True, False], ignore_index=True)
    return Importances(table, tuple(notes))


def _over_samples(
    direction: optuna.study.StudyDirection,
    samples: list[list[optuna.trial.FrozenTrial]],
    params: list[str],
    evaluator: EvaluatorFactory,
) -> tuple[dict[str, float] | None, list[dict[str, float]] | str]:
    """(importances of the full sample, of each subsample that could be computed), or (None, why not)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per subsample is noise
    try:
        full = _importances(direction, samples[0], params, evaluator)
        # A subsample can tie every value (fANOVA then raises "zero total variance"): it is skipped, and counted.
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


def _rows(name: str, full: dict, resampled: list[dict], params: list[str], n_trials: int, left_out: int) -> list[dict]:
    rows = []
    for param in params:
        values = np.array([result.get(param, 0.0) for result in resampled])
        importance = full.get(param, 0.0)
        # A normal interval around the full-sample estimate, so the estimate is always inside its own interval;
        # importances are shares of a total, so it is clipped to [0, 1].
        half_width = Z_95 * jackknife_se(values, n_trials, left_out)
        rows.append(
            {
                "param": param,
                "evaluator": name,
                "importance": importance,
                "mean": float(values.mean()) if len(values) else math.nan,
                "low": max(0.0, importance - half_width),
                "high": min(1.0, importance + half_width),
                "n_trials": n_trials,
                "n_resamples": len(resampled),
            }
        )
    return rows


def _importances(
    direction: optuna.study.StudyDirection,
    trials: list[optuna.trial.FrozenTrial],
    params: list[str],
    evaluator: EvaluatorFactory,
) -> dict[str, float]:
    sample = optuna.create_study(direction=direction)  # in memory: the real storage is never written
    sample.add_trials(trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and degenerate-sample warnings, once per subsample
        scores = optuna.importance.get_param_importances(sample, evaluator=evaluator(len(trials)), params=params)
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
