"""The two tidy tables every result is computed from: one row per trial, and one row per (trial, step, metric)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import optuna
import pandas as pd

from lit_tuning.metrics import PRIMARY_METRIC

DEFAULT_STORAGE = "sqlite:///results/tuning/optuna.db"
DATA_ROOT = Path("results/tuning/data")
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
}
# A finished trial cannot be annotated after the fact: a FAIL with no recorded reason is one whose worker
# stopped beating (every failure the worker sees itself is recorded with its reason).
KILLED_REASON = "worker died during the trial (no heartbeat)"
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
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row = {
            "study": study.study_name,
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            "datetime_start": trial.datetime_start,
            "datetime_complete": trial.datetime_complete,
        }
        row.update({name: trial.user_attrs.get(name) for name in TRIAL_ATTRS})
        if trial.state == optuna.trial.TrialState.FAIL and not row["reason"]:
            row["reason"] = KILLED_REASON
        row.update({f"{PARAM_PREFIX}{key}": value for key, value in trial.params.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=TRIAL_COLUMNS if not rows else None)
    for column in TRIAL_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame = frame.astype(TRIAL_ATTRS | {"number": "int64", "value": "float64"})
    param_columns = sorted(column for column in frame.columns if column.startswith(PARAM_PREFIX))
    return frame[TRIAL_COLUMNS + param_columns].sort_values("number", ignore_index=True)


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


def study_slug(study_name: str) -> str:
    """Return a file-name-safe form of a study name (any other character -> '_', plus a hash when changed)."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", study_name).lstrip(".") or "study"
    if slug == study_name:
        return slug
    return f"{slug}-{hashlib.sha1(study_name.encode()).hexdigest()[:8]}"  # distinct names stay distinct


def data_dir(study_name: str, root: Path = DATA_ROOT) -> Path:
    """Return results/tuning/data/<study slug>/, where a study's tables are written."""
    return root / study_slug(study_name)


# Derived tables for the report: each is computed from the two tables above (and, for train curves, MLflow).

FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


def with_compute(trials: pd.DataFrame) -> pd.DataFrame:
    """Add compute (training tokens, or steps where tokens are unknown), its running total and the best value so far."""
    frame = trials.sort_values("number", ignore_index=True).copy()
    unit = "tokens" if frame["tokens"].notna().any() else "steps"
    frame["compute"] = frame[unit].astype("Float64").fillna(0).astype("float64")
    frame["cumulative_compute"] = frame["compute"].cumsum()
    complete_values = frame["value"].where(frame["state"] == "COMPLETE")
    frame["best_so_far"] = complete_values.cummax().ffill()  # NaN until the first completed trial
    frame.attrs["compute_unit"] = unit
    return frame


def study_summary(trials: pd.DataFrame) -> dict:
    """Counts by state, the best completed trial, the untuned base-config trial, and the compute spent."""
    complete = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()]
    best = complete.loc[complete["value"].idxmax()] if len(complete) else None
    base = trials[(trials["is_base_config"].fillna(False)) & (trials["state"] == "COMPLETE")]
    counts = trials["state"].value_counts()
    return {
        "n_trials": len(trials),
        "counts": {state: int(counts.get(state, 0)) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")},
        "best_number": None if best is None else int(best["number"]),
        "best_value": None if best is None else float(best["value"]),
        "best_params": {} if best is None else {c[len(PARAM_PREFIX) :]: best[c] for c in param_columns(trials)},
        "base_number": int(base["number"].iloc[0]) if len(base) else None,
        "base_value": float(base["value"].iloc[0]) if len(base) else None,
        "steps": int(trials["steps"].fillna(0).sum()),
        "tokens": int(trials["tokens"].fillna(0).sum()),
        "duration_s": float(trials["duration_s"].fillna(0).sum()),
    }


def pruning_savings(trials: pd.DataFrame, full_steps: int | None = None) -> dict:
    """Steps and tokens the pruned trials did not run, against each running full_steps (default: longest trial)."""
    finished = trials[trials["state"].isin(FINISHED_STATES) & trials["steps"].notna()]
    if full_steps is None:
        full_steps = int(finished["steps"].max()) if len(finished) else 0
    pruned = finished[finished["state"] == "PRUNED"]
    steps_run = pruned["steps"].astype("int64")
    saved_steps = (full_steps - steps_run).clip(lower=0)
    # Tokens a pruned trial would have seen: its own tokens per step (batch size differs between trials).
    per_step = pruned["tokens"].astype("Float64") / steps_run.where(steps_run > 0)
    saved_tokens = (per_step * saved_steps).fillna(0)
    spent_steps = int(finished["steps"].sum())
    return {
        "full_steps": full_steps,
        "n_pruned": len(pruned),
        "pruned_steps_run": int(steps_run.sum()),
        "steps_saved": int(saved_steps.sum()),
        "tokens_saved": int(round(float(saved_tokens.sum()))),
        "steps_spent": spent_steps,
        "saved_fraction": float(saved_steps.sum() / (spent_steps + saved_steps.sum())) if spent_steps else 0.0,
    }


def pareto_mask(trials: pd.DataFrame, cost: str = "trainable_params") -> pd.Series:
    """True for completed trials no other completed trial beats on both value (higher) and cost (lower)."""
    ok = (trials["state"] == "COMPLETE") & trials["value"].notna() & trials[cost].notna()
    values = trials["value"].to_numpy(dtype=float)
    costs = trials[cost].astype("Float64").to_numpy(dtype=float, na_value=float("nan"))
    mask = pd.Series(False, index=trials.index)
    candidates = [index for index, keep in zip(range(len(trials)), ok) if keep]
    for i in candidates:
        dominated = any(
            values[j] >= values[i] and costs[j] <= costs[i] and (values[j] > values[i] or costs[j] < costs[i])
            for j in candidates
        )
        mask.iloc[i] = not dominated
    return mask


def mlflow_curves(trials: pd.DataFrame, metrics: tuple[str, ...] = ("train/loss",)) -> pd.DataFrame:
    """Learning-curve rows (as curves_frame) from each trial's MLflow history; trials without a run are skipped."""
    # mlflow is imported here, not at the top: it takes seconds, and the tables above never need it.
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    rows, missing = [], []
    with_runs = trials[trials["mlflow_run_id"].notna() & trials["mlflow_tracking_uri"].notna()]
    for uri, group in with_runs.groupby("mlflow_tracking_uri"):
        client = MlflowClient(tracking_uri=str(uri))
        for trial in group.itertuples():
            try:
                for metric in metrics:
                    rows += [
                        {"study": trial.study, "number": trial.number, "state": trial.state, "step": point.step,
                         "metric": metric, "value": point.value}
                        for point in client.get_metric_history(str(trial.mlflow_run_id), metric)
                    ]  # fmt: skip
            except MlflowException:
                missing.append(int(trial.number))
    frame = pd.DataFrame(rows, columns=["study", "number", "state", "step", "metric", "value"])
    frame = frame.astype({"number": "int64", "step": "int64", "value": "float64"})
    frame.attrs["missing_runs"] = missing
    return frame


def mlflow_baselines(trials: pd.DataFrame) -> dict[str, float]:
    """The baseline/* metrics logged at step 0 of the first trial run MLflow can read; {} when none can be read."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with_runs = trials[trials["mlflow_run_id"].notna() & trials["mlflow_tracking_uri"].notna()]
    for trial in with_runs.itertuples():
        try:
            run = MlflowClient(tracking_uri=str(trial.mlflow_tracking_uri)).get_run(str(trial.mlflow_run_id))
        except MlflowException:
            continue
        found = {key: float(value) for key, value in run.data.metrics.items() if key.startswith("baseline/")}
        if found:
            return found
    return {}
