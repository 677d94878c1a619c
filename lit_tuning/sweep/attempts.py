"""Attempts that died with their worker: their MLflow and W&B runs are closed as failed, not left RUNNING."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import optuna
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from lit_tuning.files import atomic_write
from lit_tuning.sweep.trial_record import KILLED_REASON
from lit_tuning.tracking.mlflow_tracker import STUDY_PARENT_TAG
from lit_tuning.tracking.outcome import ERROR_TAG, STATE_TAG
from lit_tuning.tracking.settings import TRACKING_RECORD
from lit_tuning.tracking.wandb_reader import read_wandb_run

log = logging.getLogger("lit_tuning.sweep")


def close_dead_attempts(study: optuna.Study) -> list[int]:
    """Close the tracker runs of failed trials whose process was killed; return the trial numbers closed."""
    closed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_dir = trial.user_attrs.get("run_dir")
        if not run_dir or not (Path(run_dir) / TRACKING_RECORD).is_file():
            continue
        reason = trial.user_attrs.get("reason") or KILLED_REASON
        if close_run_trackers(Path(run_dir), reason):
            closed.append(trial.number)
    return closed


def close_run_trackers(run_dir: Path, reason: str) -> bool:
    """Mark a run's MLflow run FAILED and close its W&B run with exit code 1, where they were left open."""
    record_path = run_dir / TRACKING_RECORD
    record = json.loads(record_path.read_text())
    changed = False
    mlflow_entry = record.get("mlflow")
    if mlflow_entry:
        client = MlflowClient(mlflow_entry["tracking_uri"])
        try:
            run = client.get_run(mlflow_entry["run_id"])
        except MlflowException:
            run = None
        if run is not None and run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, STATE_TAG, "failed")
            client.set_tag(run.info.run_id, ERROR_TAG, reason[:500])
            client.set_terminated(run.info.run_id, "FAILED")
            changed = True
    wandb_entry = record.get("wandb")
    if wandb_entry and wandb_entry.get("mode") != "disabled" and not wandb_entry.get("closing_run_file"):
        run_file = Path(wandb_entry.get("run_file") or "")
        if not run_file.is_file() or read_wandb_run(run_file).exit_code is None:
            wandb_entry["closing_run_file"] = str(close_wandb_run(wandb_entry, run_file, reason))
            changed = True
    if changed:
        record["closed_after_kill"] = reason
        atomic_write(record_path, json.dumps(record, indent=2) + "\n")
    return changed


def close_wandb_run(entry: dict, run_file: Path, reason: str) -> Path:
    """Resume the W&B run by id (offline: a new run file that `wandb sync` applies) and finish it as failed."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        id=entry["run_id"],
        resume="allow",
        mode=entry.get("mode", "offline"),
        dir=entry.get("dir") or str(run_file.parent.parent.parent),  # <dir>/wandb/offline-run-*/run-*.wandb
        project=entry.get("project"),
        settings=wandb.Settings(console="off"),
    )
    run.summary[STATE_TAG] = "failed"
    run.summary[ERROR_TAG] = reason
    directory = Path(run.settings.sync_dir)
    run.finish(exit_code=1)
    return next(directory.glob("*.wandb"))


def close_parent_run(study: optuna.Study, finished: bool) -> None:
    """End the study's MLflow parent run: FINISHED when the study is done, KILLED while it can still be resumed."""
    for trial in study.get_trials(deepcopy=False):
        uri = trial.user_attrs.get("mlflow_tracking_uri")
        run_id = trial.user_attrs.get("mlflow_run_id")
        if not (uri and run_id):
            continue
        client = MlflowClient(uri)
        try:
            experiment_id = client.get_run(run_id).info.experiment_id
        except MlflowException:
            continue
        query = f"tags.`{STUDY_PARENT_TAG}` = '{study.study_name}'"
        for parent in client.search_runs([experiment_id], query, max_results=10):
            client.set_terminated(parent.info.run_id, "FINISHED" if finished else "KILLED")
        return
