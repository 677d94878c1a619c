"""The trackers' side of verify: every MLflow run and W&B run file of a study, matched back to its run directory."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mlflow.entities import Run

from lit_tuning.paths import sqlite_file
from lit_tuning.tracking.mlflow_study import STUDY_PARENT_TAG, study_trial_runs
from lit_tuning.tracking.settings import TRACKING_RECORD, TrackingSettings
from lit_tuning.tracking.store import open_client
from lit_tuning.tracking.verify import RunCheck, check_run, find_runs
from lit_tuning.tracking.wandb_reader import read_wandb_run, wandb_run_files

RUN_DIR_TAG = "lit_tuning.run_dir"


def check_both_sides(
    runs_root: Path, settings: TrackingSettings, *, study: str | None, metric: str | None
) -> list[RunCheck]:
    """Check every run directory under runs_root, then every tracker run that none of them names.

    The trackers searched: the stores of settings (its root's mlflow.db and wandb/, or its MLflow URL) and
    every store a run directory names.
    """
    runs = find_runs(runs_root, study)
    records = {run: json.loads((run / TRACKING_RECORD).read_text()) for run in runs}
    recorded_uris = [r["mlflow"]["tracking_uri"] for r in records.values() if r.get("mlflow")]
    recorded_dirs = [Path(r["wandb"]["dir"]) for r in records.values() if r.get("wandb")]
    return [check_run(run, metric) for run in runs] + check_tracker_side(
        records,
        mlflow_uris=[settings.resolved_mlflow_uri(), *recorded_uris] if settings.mlflow else recorded_uris,
        experiment=settings.mlflow_experiment,
        wandb_dirs=[settings.wandb_dir(), *recorded_dirs],
        study=study,
    )


def check_tracker_side(
    records: dict[Path, dict],
    *,
    mlflow_uris: Iterable[str],
    experiment: str,
    wandb_dirs: Iterable[Path],
    study: str | None,
) -> list[RunCheck]:
    """Return a check for each tracker run that is RUNNING, has no run directory, or is not the one its directory names.

    records: each run directory's tracking.json, by directory (the run directories' side, already checked).
    """
    known_mlflow = {(r.get("mlflow") or {}).get("run_id") for r in records.values()} - {None}
    known_wandb = {(r.get("wandb") or {}).get("run_id") for r in records.values()} - {None}
    checks = []
    for uri in sorted(set(mlflow_uris)):
        for run in _mlflow_runs(uri, experiment, study):
            if run.info.run_id not in known_mlflow and (check := _check_unknown_mlflow_run(run)) is not None:
                checks.append(check)
    for wandb_dir in sorted(set(wandb_dirs)):
        for run_id, files in wandb_run_files(wandb_dir).items():
            if run_id not in known_wandb:
                check = _check_unknown_wandb_run(run_id, files, study)
                if check is not None:
                    checks.append(check)
    return checks


def _mlflow_runs(uri: str, experiment: str, study: str | None) -> list[Run]:
    database = sqlite_file(uri) if "://" in uri else None
    if database is not None and not database.is_file():
        return []  # no store, no runs: verify never creates one
    client = open_client(uri)
    if study is not None:
        return study_trial_runs(client, experiment, study)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], max_results=50_000)
    return [run for run in runs if STUDY_PARENT_TAG not in run.data.tags and RUN_DIR_TAG in run.data.tags]


def _check_unknown_mlflow_run(run: Run) -> RunCheck | None:
    """A run no checked run directory names: whether it is open, and what its directory says (None: all well)."""
    run_dir = Path(run.data.tags.get(RUN_DIR_TAG, ""))
    check = RunCheck(run_dir=run_dir, name=run.info.run_name or run.info.run_id, mlflow_status=run.info.status)
    if run.info.status == "RUNNING":
        check.problems.append(f"MLflow run {run.info.run_id} left RUNNING")
    record_path = run_dir / TRACKING_RECORD
    if not run.data.tags.get(RUN_DIR_TAG) or not run_dir.is_dir():
        check.problems.append(f"MLflow run {run.info.run_id} has no run directory")
    elif not record_path.is_file():
        check.problems.append(f"MLflow run {run.info.run_id}: {run_dir} has no {TRACKING_RECORD}")
    else:
        named = (json.loads(record_path.read_text()).get("mlflow") or {}).get("run_id")
        if named != run.info.run_id:
            check.problems.append(f"MLflow run {run.info.run_id}: {record_path} names run {named} instead")
    return check if check.problems else None  # a closed run whose directory lies outside --runs-root


def _check_unknown_wandb_run(run_id: str, files: list[Path], study: str | None) -> RunCheck | None:
    """A W&B run of the study no run directory names (None for another study's run)."""
    first = read_wandb_run(files[0])
    if study is not None and first.group != study:
        return None
    exit_codes = [first.exit_code, *(read_wandb_run(path).exit_code for path in files[1:])]
    check = RunCheck(run_dir=files[0].parent, name=first.name or run_id)
    check.wandb_state = "running" if all(code is None for code in exit_codes) else "closed"
    if check.wandb_state == "running":
        check.problems.append(f"W&B run {run_id} never finished")
    check.problems.append(f"W&B run {run_id} ({files[0]}) has no run directory naming it")
    return check
