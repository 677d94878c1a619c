"""Attempts that died with their worker: their MLflow and W&B runs are closed as failed, not left RUNNING."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import optuna
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from lit_tuning.files import atomic_write
from lit_tuning.sweep.trial_record import KILLED_REASON, stored_killed_reason
from lit_tuning.tracking.mlflow_study import STUDY_PARENT_TAG, TRIAL_TAG, fail_run, study_trial_runs, tag_filter
from lit_tuning.tracking.outcome import ERROR_TAG, STATE_TAG
from lit_tuning.tracking.settings import TRACKING_RECORD, TrackingSettings
from lit_tuning.tracking.store import open_client
from lit_tuning.tracking.wandb_reader import find_wandb_run_file, read_wandb_run

log = logging.getLogger("lit_tuning.sweep")


def close_dead_attempts(study: optuna.Study, tracking: TrackingSettings | None = None) -> list[int]:
    """Close the tracker runs of trials whose process was killed; return the trial numbers closed.

    Two sides: each failed trial's run directory records its runs; and every MLflow run tagged with the study
    that is still RUNNING while its trial is not (a kill between the run's creation and its record) is found by
    its tags. tracking: where the sweep's trials log (None: only the first side).
    """
    closed = set()
    study_attrs = study.user_attrs
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_dir = trial.user_attrs.get("run_dir")
        if not run_dir or not (Path(run_dir) / TRACKING_RECORD).is_file():
            continue
        reason = trial.user_attrs.get("reason") or stored_killed_reason(study_attrs, trial.number)
        if close_run_trackers(Path(run_dir), reason):
            closed.add(trial.number)
    if tracking is not None and tracking.mlflow:
        closed.update(close_orphan_mlflow_runs(study, tracking))
    return sorted(closed)


def close_orphan_mlflow_runs(study: optuna.Study, tracking: TrackingSettings) -> list[int]:
    """Close every RUNNING MLflow trial run of the study whose trial is no longer running; return their trials."""
    client = open_client(tracking.resolved_mlflow_uri())
    # Order matters: runs first, then trial states, then each run again. A trial that starts meanwhile is not
    # in the first list; one that ends meanwhile closed its runs before Optuna heard of its end.
    candidates = [
        run
        for run in study_trial_runs(client, tracking.mlflow_experiment, study.study_name)
        if run.info.status == "RUNNING"
    ]
    running = {trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    closed = []
    for run in candidates:
        trial = run.data.tags.get(TRIAL_TAG)
        if trial is not None and trial.isdigit() and int(trial) in running:
            continue
        if client.get_run(run.info.run_id).info.status != "RUNNING":
            continue
        reason = stored_killed_reason(study.user_attrs, int(trial)) if trial and trial.isdigit() else KILLED_REASON
        fail_run(client, run.info.run_id, reason)
        log.warning("closed MLflow run %s of trial %s: its process died before recording it", run.info.run_id, trial)
        _record_closed_run(run.data.tags.get("lit_tuning.run_dir"), run, tracking.resolved_mlflow_uri())
        if trial is not None and trial.isdigit():
            closed.append(int(trial))
    return closed


def _record_closed_run(run_dir: str | None, run: Run, tracking_uri: str) -> None:
    """Write the closed run into its run directory's record, which the kill left without it (or never made)."""
    if not run_dir:
        return
    record_path = Path(run_dir) / TRACKING_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"run_name": run.info.run_name}
    if (record.get("mlflow") or {}).get("run_id") == run.info.run_id:
        return
    record["mlflow"] = {
        "tracking_uri": tracking_uri,
        "experiment_id": run.info.experiment_id,
        "run_id": run.info.run_id,
    }
    record.setdefault("study", run.data.tags.get("study"))
    record.setdefault("trial", int(run.data.tags[TRIAL_TAG]) if run.data.tags.get(TRIAL_TAG, "").isdigit() else None)
    record["closed_after_kill"] = KILLED_REASON
    atomic_write(record_path, json.dumps(record, indent=2) + "\n")


def close_run_trackers(run_dir: Path, reason: str) -> bool:
    """Mark a run's MLflow run FAILED and close its W&B run with exit code 1, where they were left open."""
    record_path = run_dir / TRACKING_RECORD
    record = json.loads(record_path.read_text())
    changed = False
    mlflow_entry = record.get("mlflow")
    if mlflow_entry:
        client = open_client(mlflow_entry["tracking_uri"])
        try:
            run = client.get_run(mlflow_entry["run_id"])
        except MlflowException:
            run = None
        if run is not None and run.info.status == "RUNNING":
            fail_run(client, run.info.run_id, reason)
            changed = True
    wandb_entry = record.get("wandb")
    if wandb_entry and wandb_entry.get("mode") != "disabled" and not wandb_entry.get("closing_run_file"):
        recorded = wandb_entry.get("run_file")
        run_file = Path(recorded) if recorded and Path(recorded).is_file() else None
        run_file = run_file or find_wandb_run_file(Path(wandb_entry["dir"]), wandb_entry["run_id"])
        if run_file is not None and recorded != str(run_file):
            wandb_entry["run_file"] = str(run_file)  # killed before recording it: found by the id chosen earlier
            changed = True
        if run_file is None or read_wandb_run(run_file).exit_code is None:
            wandb_entry["closing_run_file"] = str(close_wandb_run(wandb_entry, reason))
            changed = True
    if changed:
        record["closed_after_kill"] = reason
        atomic_write(record_path, json.dumps(record, indent=2) + "\n")
    return changed


def close_wandb_run(entry: dict, reason: str) -> Path:
    """Resume the W&B run by id (offline: a new run file that `wandb sync` applies) and finish it as failed."""
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        id=entry["run_id"],
        resume="allow",
        mode=entry.get("mode", "offline"),
        dir=entry["dir"],
        project=entry.get("project"),
        settings=wandb.Settings(console="off"),
    )
    run.summary[STATE_TAG] = "failed"
    run.summary[ERROR_TAG] = reason
    directory = Path(run.settings.sync_dir)
    run.finish(exit_code=1)
    return next(directory.glob("*.wandb"))


def close_parent_run(study: optuna.Study, finished: bool, tracking: TrackingSettings) -> None:
    """End the study's MLflow parent run: FINISHED when the study is done, KILLED while it can still be resumed."""
    if not tracking.mlflow:
        return
    client = open_client(tracking.resolved_mlflow_uri())
    experiment = client.get_experiment_by_name(tracking.mlflow_experiment)
    if experiment is None:
        return
    query = tag_filter(STUDY_PARENT_TAG, study.study_name)
    for parent in client.search_runs([experiment.experiment_id], query, max_results=10):
        client.set_terminated(parent.info.run_id, "FINISHED" if finished else "KILLED")
