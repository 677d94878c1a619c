"""The trial record: what the sweep writes on each Optuna trial, and the two tidy tables every reader builds from it.

The sweep (the writer) and the analysis layer (the readers) both import this module, so an attribute's name, type
and meaning, a state's grouping and a reason's wording have one owner.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Iterable

import numpy as np
import optuna
import pandas as pd
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from lit_tuning.paths import DEFAULT_STORAGE
from lit_tuning.train.metrics import PRIMARY_METRIC

PARAM_PREFIX = "params_"  # Optuna's own trials_dataframe convention: params_<dotted key>
# Per-trial facts the sweep records as Optuna user attributes (lit_tuning/sweep/objective.py).
TRIAL_ATTRS = {
    "steps": "Int64",  # optimizer steps run by this attempt's training (pruned trials stop early)
    "tokens": "Int64",  # prompt tokens seen in training
    "trainable_params": "Int64",
    "total_params": "Int64",
    "duration_s": "float64",
    "reason": "string",  # why a trial was pruned or failed
    "run_dir": "string",
    "mlflow_run_id": "string",
    "mlflow_tracking_uri": "string",
    "worker": "string",
    "device": "string",
    "retry_of": "Int64",  # number of the killed/interrupted trial this one resumed
    "resumed_from_step": "Int64",
    "is_base_config": "boolean",  # the untuned base config, enqueued as the study's first trial
    "resume_note": "string",  # why a retry did not resume from its predecessor's checkpoint (e.g. truncated)
    "base_model": "string",  # the weights trained: an embedded model's build (tiny-<hash>), or the model reference
}
# A finished trial cannot be annotated after the fact: a FAIL with no recorded reason is one whose worker
# stopped beating (every failure the worker sees itself is recorded with its reason).
KILLED_REASON = "worker died during the trial (no heartbeat)"
# Optuna refuses attributes on a finished trial, so what the driver learns about a killed trial (exit signal,
# log, retries given up) is kept as a study attribute keyed by the trial's number and read back here.
KILLED_REASON_ATTR = "killed_reason:t{number:04d}"


def record_killed_reason(study: optuna.Study, number: int, reason: str) -> None:
    """Keep why trial `number` died (its worker's exit), readable after Optuna has failed the trial."""
    study.set_user_attr(KILLED_REASON_ATTR.format(number=number), reason)


def stored_killed_reason(study_attrs: dict, number: int) -> str:
    """Why trial `number` died as the driver recorded it, else the heartbeat default."""
    return study_attrs.get(KILLED_REASON_ATTR.format(number=number)) or KILLED_REASON


def retry_history(trial: optuna.trial.FrozenTrial) -> list[int]:
    """Numbers of the earlier attempts this trial retries, oldest first (Optuna's record; [] for a first attempt)."""
    with warnings.catch_warnings():  # "experimental" since Optuna 3.0; readers such as the report need no notice
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def killed_reason(study_attrs: dict, trial: optuna.trial.FrozenTrial, retried: set[int]) -> str:
    """Why a killed trial died (the driver's record, else the heartbeat default), and whether it was given up."""
    reason = stored_killed_reason(study_attrs, trial.number)
    if trial.number not in retried:  # stale trials are failed and retried in one step: no retry means the limit
        attempts = len(retry_history(trial)) + 1
        reason += f"; given up after {attempts} attempt{'s' * (attempts > 1)} (retry limit)"
    return reason


TRIAL_COLUMNS = ["study", "number", "state", "value", "datetime_start", "datetime_complete", *TRIAL_ATTRS]


def load_study(study_name: str, storage: str = DEFAULT_STORAGE) -> optuna.Study:
    """Open an existing study read-only in spirit (no sampler state is needed to read it)."""
    return optuna.load_study(study_name=study_name, storage=storage)


def latest_study_name(storage: str = DEFAULT_STORAGE) -> str:
    """Return the name of the study whose newest trial started last; raise ValueError when there is none."""
    summaries = [s for s in optuna.get_all_study_summaries(storage) if s.datetime_start is not None]
    if not summaries:
        raise ValueError(f"no study with trials in {storage}; run `make sweep` first")
    return max(summaries, key=lambda summary: summary.datetime_start).study_name


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, one params_<key> column per parameter, and the recorded facts."""
    attrs = ("number", "state", "value", "datetime_start", "datetime_complete", "params", "user_attrs")
    frame = study.trials_dataframe(attrs=attrs)
    # Optuna names user attributes user_attrs_<name>; the record's columns are the bare names, and only the declared
    # ones (a user attribute the sweep does not declare is not part of the record).
    frame = frame.rename(columns={f"user_attrs_{name}": name for name in TRIAL_ATTRS})
    frame = frame.drop(columns=[column for column in frame.columns if column.startswith("user_attrs_")])
    frame.insert(0, "study", study.study_name)
    for column in TRIAL_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame = frame.astype(TRIAL_ATTRS | {"number": "int64", "value": "float64"})
    unexplained = (frame["state"] == "FAIL") & frame["reason"].fillna("").eq("")
    if unexplained.any():  # killed trials: the driver's record of why (kept as a study attribute), else the default
        trials = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
        retried = {number for trial in trials.values() for number in retry_history(trial)}
        numbers = frame.loc[unexplained, "number"]
        frame.loc[unexplained, "reason"] = [killed_reason(study.user_attrs, trials[n], retried) for n in numbers]
    return frame[TRIAL_COLUMNS + sorted(param_columns(frame))].sort_values("number", ignore_index=True)


def param_columns(trials: pd.DataFrame) -> list[str]:
    """Return the params_<key> columns of a trials table."""
    return [column for column in trials.columns if column.startswith(PARAM_PREFIX)]


def curves_frame(study: optuna.Study, metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """One row per reported point: study, number, state, step, metric, value (the objective at each validation)."""
    rows = [
        {
            "study": study.study_name,
            "number": trial.number,
            "state": trial.state.name,
            "step": step,
            "metric": metric,
            "value": value,
        }
        for trial in study.get_trials(deepcopy=False)
        for step, value in sorted(trial.intermediate_values.items())
    ]
    frame = pd.DataFrame(rows, columns=["study", "number", "state", "step", "metric", "value"])
    return frame.astype({"number": "int64", "step": "int64", "value": "float64"})


INTERRUPTED = "interrupted"  # the `reason` of a trial stopped by Ctrl-C: resumed, from its checkpoint, on re-run
# States that count against a study's budget: finished for good, or being (or about to be) run.
BUDGETED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")  # a trial that will not run again (a FAIL may be retried as a new one)
# Finished and counted against the budget: what "N/budget done" counts (a FAIL is retried, so it uses no budget).
DONE_STATES = tuple(state for state in FINISHED_STATES if TrialState[state] in BUDGETED)
STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def count_states(states: Iterable[str]) -> dict[str, int]:
    """Trials per state name (e.g. a trials table's `state` column), every state of STATE_ORDER present (0 if none)."""
    counts = collections.Counter(str(state) for state in states)
    return {state: counts[state] for state in STATE_ORDER}


def ascending(direction: optuna.study.StudyDirection | str) -> bool:
    """True when lower values are better (a minimised study): the one place a ranking reads the direction."""
    name = direction.name if isinstance(direction, optuna.study.StudyDirection) else str(direction).upper()
    return name == "MINIMIZE"


def study_direction(study: optuna.Study) -> str:
    """'maximize' or 'minimize': the direction a study's trials table is ranked by."""
    return "minimize" if ascending(study.direction) else "maximize"


def best_first(trials: pd.DataFrame, *, direction: str) -> pd.DataFrame:
    """Completed trials with a finite value, best first in the direction (ties: lower trial number first).

    A non-finite value (a diverged loss of inf) is not a result that can be ranked, replayed or compared, so every
    reader leaves it out of rankings; the report counts and names such trials instead.
    """
    values = trials["value"].astype("float64")
    ranked = trials[(trials["state"] == "COMPLETE") & np.isfinite(values)]
    return ranked.sort_values(["value", "number"], ascending=[ascending(direction), True])
