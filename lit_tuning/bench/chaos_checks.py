"""The checks of `make chaos` after its kills: the study, its retries, the MLflow store, tracking verify, steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna

from lit_tuning.sweep.trial_record import retry_history, trials_frame
from lit_tuning.tracking.settings import TrackingSettings


def check(work: Path, storage: str, study_name: str, budget: int, steps: int) -> dict[str, Any]:
    """Check the finished study, its trackers and run directories; return the findings."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    table = trials_frame(study).set_index("number")
    finished_states = ("COMPLETE", "PRUNED")
    finished_retries = {n for t in trials if t.state.name in finished_states for n in retry_history(t)}
    failed = [t for t in trials if t.state.name == "FAIL"]
    given_up = [t.number for t in failed if "given up" in str(table.loc[t.number, "reason"])]
    # A chain of attempts ends either finished or given up at the retry limit: every attempt in it is accounted for.
    given_up_chains = {n for t in failed if t.number in given_up for n in retry_history(t)} | set(given_up)
    unaccounted = [t.number for t in failed if t.number not in finished_retries | given_up_chains]
    verify_command = ["verify", f"--runs-root={work / 'runs'}", f"--study={study_name}"]
    verify = subprocess.run(
        [sys.executable, "-m", "lit_tuning.tracking", *verify_command], capture_output=True, text=True, check=False
    )
    computed = sum(attempt_steps(trial) for trial in trials)
    minimum = budget * steps
    logs = [work / "driver.log", *sorted((work / "runs" / study_name / "logs").glob("*.log"))]
    lines = [line.strip() for path in logs if path.is_file() for line in path.read_text().splitlines()]
    return {
        "trials": len(trials),
        "finished": sum(t.state.name in finished_states for t in trials),
        "budget": budget,
        "left_running": [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")],
        "failed_attempts": len(failed),
        "retried_to_the_end": sum(t.number in finished_retries for t in failed),
        "given_up": {n: str(table.loc[n, "reason"]) for n in given_up},
        "killed_without_retry_or_reason": unaccounted,
        "resumed_from_checkpoint": sum(bool(t.user_attrs.get("resumed_from_step")) for t in trials),
        "resume_notes": [t.user_attrs["resume_note"] for t in trials if t.user_attrs.get("resume_note")],
        "mlflow_runs_left_running": mlflow_running(work),
        "verify_exit": verify.returncode,
        "verify_summary": (verify.stdout.strip().splitlines() or [""])[-1],
        "steps_computed": computed,
        "steps_minimum": minimum,
        "steps_recomputed": computed - minimum,
        "temporary_files_left": len(list(work.glob("data/*/.*.tmp")) + list(work.glob("configs/*/.*.tmp"))),
        "store_errors": sorted({line for line in lines if "already exists" in line})[:5],
    }


def attempt_steps(trial: optuna.trial.FrozenTrial) -> int:
    """Optimizer steps this attempt ran itself: to its end (or its last step logged to MLflow), minus resumed ones."""
    start = trial.user_attrs.get("resumed_from_step") or 0
    if "steps" in trial.user_attrs:
        return int(trial.user_attrs["steps"]) - start
    run_id, uri = trial.user_attrs.get("mlflow_run_id"), trial.user_attrs.get("mlflow_tracking_uri")
    if not (run_id and uri):  # killed before its trackers started: no step ran
        return 0
    from mlflow import MlflowClient

    try:
        history = MlflowClient(uri).get_metric_history(run_id, "train/loss")
    except Exception:  # a store the kills broke: count no steps rather than stop the harness
        return 0
    # Lightning logs step k's loss before the optimizer step that makes it k + 1 completed steps.
    return max((point.step + 1 for point in history), default=start) - start


def mlflow_running(work: Path) -> list[str]:
    """Names of the MLflow runs of the work folder's store still RUNNING (every run, not only those Optuna knows)."""
    from mlflow import MlflowClient

    client = MlflowClient(TrackingSettings(root=str(work)).resolved_mlflow_uri())
    try:
        experiments = [experiment.experiment_id for experiment in client.search_experiments()]
        runs = client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=1000) if experiments else []
    except Exception as error:  # a store the kills broke: that is a finding, not a crash of the harness
        return [f"store unreadable: {type(error).__name__}: {str(error).splitlines()[0][:200]}"]
    return sorted(
        f"{run.info.run_name} ({run.data.tags.get('mlflow.parentRunId') and 'child' or 'parent'})" for run in runs
    )


def passed(findings: dict[str, Any]) -> dict[str, bool]:
    """Each promise of the harness, kept or not."""
    return {
        "no_trial_left_running": not findings["left_running"],
        "finished_equals_budget": findings["finished"] == findings["budget"],
        "every_killed_trial_retried_or_given_up_with_reason": not findings["killed_without_retry_or_reason"],
        "no_mlflow_run_left_running": not findings["mlflow_runs_left_running"],
        "tracking_verify_clean": findings["verify_exit"] == 0,
        "no_tracker_store_error": not findings["store_errors"],
        "resumable_after_every_kill": findings.get("aborted") is None,
    }
