"""What the report reads from each trial's MLflow run: training-loss history, reference baselines and UI links."""

from __future__ import annotations

import pandas as pd

# mlflow is imported inside each function, not at the top: it takes seconds, and a report without runs never needs it.


def _with_runs(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["mlflow_run_id"].notna() & trials["mlflow_tracking_uri"].notna()]


def mlflow_curves(trials: pd.DataFrame, metrics: tuple[str, ...] = ("train/loss",)) -> pd.DataFrame:
    """Learning-curve rows (as curves_frame) from each trial's MLflow history; trials without a run are skipped."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    rows, missing = [], []
    with_runs = _with_runs(trials)
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

    with_runs = _with_runs(trials)
    for trial in with_runs.itertuples():
        try:
            run = MlflowClient(tracking_uri=str(trial.mlflow_tracking_uri)).get_run(str(trial.mlflow_run_id))
        except MlflowException:
            continue
        found = {key: float(value) for key, value in run.data.metrics.items() if key.startswith("baseline/")}
        if found:
            return found
    return {}


def mlflow_links(trials: pd.DataFrame, ui: str) -> dict[int, str]:
    """Trial number -> the MLflow UI address of its run (needs the run's experiment id from its store)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    links = {}
    for trial in _with_runs(trials).itertuples():
        try:
            run = MlflowClient(tracking_uri=str(trial.mlflow_tracking_uri)).get_run(str(trial.mlflow_run_id))
        except MlflowException:
            continue
        links[int(trial.number)] = f"{ui.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return links
