"""Derived tables of a finished study for the report: compute and best-so-far, the summary, pruning savings, Pareto."""

from __future__ import annotations

import pandas as pd

from lit_tuning.sweep.trial_record import FINISHED_STATES, PARAM_PREFIX, param_columns

# Derived tables for the report: each is computed from the two tables above (and, for train curves, MLflow).


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
