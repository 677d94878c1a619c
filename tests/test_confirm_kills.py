"""`make confirm` after a real SIGKILL of itself or of one of its fits: finished runs kept, the re-run completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import ROOT
from mlflow import MlflowClient
from sweep_helpers import alive, processes_naming

QUICK_SPACE = ROOT / "configs/hyperparameters/search_spaces/quick.yaml"  # its base config runs on embedded:micro
RANK = "rank01_t0000"
STEPS = 60  # long enough that a fit is still training when the test kills it, seconds on the micro model


@pytest.fixture
def study(tmp_path: Path, micro_model_dir: Path) -> dict:
    """A finished micro study with one rank file: confirm's jobs are that config and the base config, seed 0."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="quick", storage=storage, direction="maximize")
    study.set_user_attr("search_space", str(QUICK_SPACE))
    study.add_trial(optuna.trial.create_trial(value=0.1))
    root = tmp_path / "results"
    rank = root / "configs" / "quick" / f"{RANK}.yaml"
    rank.parent.mkdir(parents=True)
    rank.write_text(
        "model: {model_name_or_path: 'embedded:micro', lora_r: 4, learning_rate: 0.005}\n"
        "data: {num_words: 300}\ntrainer: {val_check_interval: 10, enable_progress_bar: false}\n"
    )
    return {"storage": storage, "root": root, "runs": root / "runs" / "quick-confirm", "tmp": tmp_path}


def confirm_command(study: dict, workers: int) -> list[str]:
    """The confirm command line of the study: top 1 and base, one seed, MLflow in the test's folder, no W&B."""
    return [
        sys.executable, "-m", "lit_tuning.analysis.confirm", "--study", "quick", "--storage", study["storage"],
        "--root", str(study["root"]), "--top-k", "1", "--seeds", "1", "--max-steps", str(STEPS),
        "--workers", str(workers), f"--tracking.root={study['tmp'] / 'tracking'}", "--tracking.wandb_mode=disabled",
    ]  # fmt: skip


def run_dir(study: dict, config: str) -> Path:
    """The first attempt's run directory of a config's seed 0."""
    return study["runs"] / f"confirm-{config}-s0-{STEPS}steps"


def fits_of(runs: Path) -> list[int]:
    """The pids of the `fit` processes writing under runs."""
    return processes_naming(str(runs), "\0fit\0")


def wait_for(condition, what: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Poll until condition() holds; fail if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"confirm ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.05)


def table(study: dict) -> pd.DataFrame:
    """confirm.csv of the study, one row per finished run."""
    return pd.read_csv(study["root"] / "data" / "quick" / "confirm.csv")


def assert_killed_attempt_closed(killed: Path) -> None:
    """A killed attempt's directory is kept and its MLflow run is closed as failed, not left RUNNING."""
    mlflow = json.loads((killed / "tracking.json").read_text())["mlflow"]
    run = MlflowClient(mlflow["tracking_uri"]).get_run(mlflow["run_id"])
    assert run.info.status == "FAILED", run.info.status


def rerun_to_the_end(study: dict, finished: pd.DataFrame) -> subprocess.CompletedProcess[str]:
    """Re-run confirm; it completes, keeps each finished row as it was and runs only the rest."""
    rerun = subprocess.run(confirm_command(study, workers=1), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for row in finished.itertuples():
        assert f"confirm: {row.config} seed {row.seed}" not in rerun.stdout, f"{row.config} was run again"
    after = table(study)
    assert sorted(after["config"]) == ["base", RANK]
    pd.testing.assert_frame_equal(after.iloc[: len(finished)], finished)  # finished rows kept as they were
    return rerun


@pytest.mark.slow  # three real fits (~1-2 min on 2 cores): `make test-all` (CI) runs it
def test_a_killed_confirm_takes_its_fit_along_and_its_rerun_finishes_only_what_was_left(study: dict) -> None:
    # One worker: the rank config runs first, then the base config, which is killed mid-training with confirm.
    confirm = subprocess.Popen(
        confirm_command(study, workers=1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    killed = run_dir(study, "base")
    wait_for(lambda: (killed / "config.yaml").is_file(), "base run under way", confirm)
    (fit,) = fits_of(study["runs"])
    finished = table(study)
    os.kill(confirm.pid, signal.SIGKILL)
    confirm.wait(timeout=60)
    deadline = time.monotonic() + 600
    while alive(fit) and time.monotonic() < deadline:  # an orphaned fit would run to its end: wait for it too
        time.sleep(0.1)
    assert not alive(fit)
    # A fit that ran on after confirm died would have finished its run unseen, adapter and all, racing any re-run.
    assert not (killed / "adapter").exists(), "the fit of the killed confirm ran on to its end"
    assert list(finished["config"]) == [RANK]
    rerun_to_the_end(study, finished)
    assert table(study)["run_dir"].iloc[-1] == f"{killed}-a2"
    assert_killed_attempt_closed(killed)


@pytest.mark.slow  # three real fits (~1-2 min on 2 cores): `make test-all` (CI) runs it
def test_a_killed_fit_of_two_workers_keeps_the_other_run_and_its_rerun_finishes(study: dict) -> None:
    confirm = subprocess.Popen(
        confirm_command(study, workers=2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: (run_dir(study, "base") / "config.yaml").is_file(), "base run under way", confirm)
    (base_fit,) = processes_naming(str(study["runs"]), f"\0{run_dir(study, 'base').name}\0")
    os.kill(base_fit, signal.SIGKILL)
    stdout, stderr = confirm.communicate(timeout=600)
    assert confirm.returncode == 2 and "failed (exit -9)" in stderr, stderr[-3000:]
    finished = table(study)
    assert list(finished["config"]) == [RANK], "the other worker's run, under way at the kill, was not kept"
    rerun_to_the_end(study, finished)
    assert_killed_attempt_closed(run_dir(study, "base"))
