"""Tracker stores and runs after a real SIGKILL at a chosen instant: the store recovers, no run stays RUNNING."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, micro_args
from mlflow import MlflowClient
from optuna.trial import TrialState
from sweep_helpers import sqlite_url, sweep_command, write_space

from lit_tuning.sweep.attempts import close_dead_attempts
from lit_tuning.sweep.trial_record import record_killed_reason
from lit_tuning.tracking import TrackingSettings, WandbTracker
from lit_tuning.tracking.cli import main as tracking_main
from lit_tuning.tracking.mlflow_study import prepare_study, study_trial_runs
from lit_tuning.tracking.store import BROKEN, CREATING, ensure_store

KILL_POINTS = ROOT / "tests" / "kill_points"  # its sitecustomize.py SIGKILLs a process at LIT_TUNING_KILL_AT
# A fresh MLflow 3.17 store runs ~1,680 SQL statements while it is created and migrated.
STORE_STATEMENTS = (1, 400, 1200, 1650)


def killed_at(point: str, *command: str, cwd: Path = ROOT, once: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command with the kill hook armed at `point`; return the finished process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(KILL_POINTS), str(ROOT / "tests"), str(ROOT)])}
    env["LIT_TUNING_KILL_AT"] = point
    if once is not None:
        env["LIT_TUNING_KILL_ONCE"] = str(once)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def build_store_killed_at(statement: int, uri: str, builder: str = "ensure_store") -> None:
    """Create the store at uri in a child process that is SIGKILLed at its N-th SQL statement."""
    create = {
        "ensure_store": f"from lit_tuning.tracking.store import ensure_store; ensure_store({uri!r})",
        "mlflow": f"from mlflow import MlflowClient; MlflowClient({uri!r}).search_experiments()",  # MLflow alone
    }[builder]
    result = killed_at(f"statement:{statement}", sys.executable, "-c", create)
    assert result.returncode == -signal.SIGKILL, f"not killed at statement {statement}: {result.stderr[-2000:]}"


def assert_store_works(uri: str, database: Path) -> None:
    """The sweep's first steps succeed on the store: experiment, parent run, a run logged and closed."""
    parent = prepare_study(uri, "lit_tuning", None, "s")
    client = MlflowClient(uri)
    run = client.create_run(client.get_run(parent).info.experiment_id, tags={"study": "s", "trial": "0"})
    client.log_metric(run.info.run_id, "m", 1.0)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert not list(database.parent.glob(f"*{CREATING}*")), "a killed builder's temporary store was left behind"


def test_a_store_killed_mid_migration_is_never_half_built(tmp_path):
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    build_store_killed_at(400, uri)
    assert not database.exists()  # the half-built store is a temporary file, never the store itself
    assert list(tmp_path.glob(f"mlflow.db{CREATING}*"))
    assert_store_works(uri, database)


@pytest.mark.slow
@pytest.mark.parametrize("statement", STORE_STATEMENTS)
def test_the_store_recovers_from_a_kill_at_any_point_of_its_creation(tmp_path, statement):
    database = tmp_path / "mlflow.db"
    build_store_killed_at(statement, f"sqlite:///{database}")
    assert_store_works(f"sqlite:///{database}", database)


@pytest.mark.slow
def test_a_store_half_migrated_by_mlflow_alone_is_moved_aside_and_rebuilt(tmp_path):
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    build_store_killed_at(400, uri, builder="mlflow")
    broken = subprocess.run(
        [sys.executable, "-c", f"from mlflow import MlflowClient; MlflowClient({uri!r}).search_experiments()"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert broken.returncode != 0  # the bug this guards against: MLflow cannot reopen its half-migrated store
    assert ensure_store(uri) == database
    assert len(list(tmp_path.glob(f"mlflow.db{BROKEN}*"))) == 1  # kept for a person to look at, never deleted
    assert_store_works(uri, database)


def orphan_trial(tmp_path: Path, study_name: str) -> tuple[optuna.Study, optuna.Trial, Path]:
    """A study whose trial 0 is running, and where its fit writes."""
    study = optuna.create_study(study_name=study_name, storage=sqlite_url(tmp_path), direction="maximize")
    trial = study.ask()
    run_dir = tmp_path / "runs" / "t0000"
    trial.set_user_attr("run_dir", str(run_dir))
    return study, trial, run_dir


def verify(tmp_path: Path, study: str) -> int:
    args = ["verify", "--runs-root", str(tmp_path / "runs"), "--tracking-root", str(tmp_path / "tracking")]
    return tracking_main([*args, "--study", study])


def test_a_run_killed_before_its_id_was_recorded_is_found_closed_and_verified(tmp_path, micro_model_dir, capsys):
    study, trial, run_dir = orphan_trial(tmp_path, "orphan")
    args = micro_args(tmp_path / "runs", "--run_name", "t0000", "--tracking.study", "orphan", "--tracking.trial", "0")
    result = killed_at("trial_run", sys.executable, "-m", "lit_tuning", "fit", *args)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not (run_dir / "tracking.json").exists()  # the kill came before anything recorded the run's id
    settings = TrackingSettings(root=str(tmp_path / "tracking"))
    client = MlflowClient(settings.resolved_mlflow_uri())
    (run,) = study_trial_runs(client, settings.mlflow_experiment, "orphan")
    assert run.info.status == "RUNNING"

    assert verify(tmp_path, "orphan") == 1  # found from the trackers' side, though no run directory names it
    out = capsys.readouterr().out
    assert f"MLflow run {run.info.run_id} left RUNNING" in out and "1 with problems" in out

    assert close_dead_attempts(study, settings) == []  # its trial still runs (as far as Optuna knows): keep it open
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    study.tell(trial, state=TrialState.FAIL)  # what the heartbeat check does for a dead worker's trial
    record_killed_reason(study, 0, "worker-0 (pid 7) killed by SIGKILL during the trial")  # what the driver saw
    assert close_dead_attempts(study, settings) == [0]
    closed = client.get_run(run.info.run_id)
    assert closed.info.status == "FAILED" and closed.data.tags["lit_tuning.state"] == "failed"
    assert closed.data.tags["lit_tuning.error"] == "worker-0 (pid 7) killed by SIGKILL during the trial"
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"] == run.info.run_id
    assert verify(tmp_path, "orphan") == 0, capsys.readouterr().out


def test_verify_fails_on_a_wandb_run_of_the_study_with_no_run_directory(tmp_path, capsys):
    settings = TrackingSettings(root=str(tmp_path / "tracking"))
    tracker = WandbTracker(
        mode="offline", project="p", entity=None, save_dir=settings.wandb_dir(), run_name="stray/t0007",
        group="stray", job_type="trial", tags={}, config={},
    )  # fmt: skip
    tracker.finalize("success")
    (tmp_path / "runs").mkdir()
    assert verify(tmp_path, "stray") == 1
    out = capsys.readouterr().out
    assert f"W&B run {tracker.version}" in out and "has no run directory naming it" in out
    assert verify(tmp_path, "another-study") == 1  # not this study's run: nothing to check at all
    assert "no tracked runs" in capsys.readouterr().out


@pytest.mark.slow
def test_the_sweep_closes_a_run_whose_worker_died_before_recording_it(tmp_path, model_cache):
    space = write_space(tmp_path, "orphans", {"trainer.max_steps": 20}, n_trials=2)
    command = sweep_command(space, tmp_path, sqlite_url(tmp_path), "--workers=1", "--heartbeat=1")
    result = killed_at("trial_run", *command, once=tmp_path / "killed-once")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "killed-once").exists()  # the first trial's worker was killed at that instant
    study = optuna.load_study(study_name="orphans", storage=sqlite_url(tmp_path))
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 2
    settings = TrackingSettings(root=str(tmp_path))
    runs = study_trial_runs(MlflowClient(settings.resolved_mlflow_uri()), settings.mlflow_experiment, "orphans")
    assert len(runs) == len(study.trials) == 3 and "RUNNING" not in {run.info.status for run in runs}
    args = ["verify", "--runs-root", str(tmp_path / "runs"), "--tracking-root", str(tmp_path), "--study", "orphans"]
    assert tracking_main(args) == 0
