"""The sweep driver end to end on the micro model: results, pruning, trackers, replay, resume and its budget."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from sweep_helpers import (
    POSTGRES_URL,
    ROOT,
    private_postgres,
    require_postgres,
    run_sweep,
    sqlite_url,
    states,
    sweep_command,
    with_base_file,
    write_space,
)

from lit_tuning.tracking.mlflow_tracker import STUDY_PARENT_TAG
from lit_tuning.tracking.verify import check_run, find_runs
from lit_tuning.train.base_model import RECIPES

STUDY = "e2e"
N_TRIALS = 4


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A 4-trial random study with a median pruner, run by `python -m lit_tuning.sweep` with one worker."""
    root = tmp_path_factory.mktemp("sweep")
    space = write_space(
        root, STUDY, n_trials=N_TRIALS, pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}
    )
    result = run_sweep(space, root, sqlite_url(root), "--workers=1", "--top-k=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, space, result


def load(root: Path, name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=sqlite_url(root))


def test_study_runs_its_budget_prunes_and_shows_progress(finished, micro_model_dir):
    root, _, result = finished
    study = load(root)
    weights = hashlib.sha256((micro_model_dir / "model.safetensors").read_bytes()).hexdigest()[:12]
    assert len(study.trials) == N_TRIALS
    assert set(states(study)) <= {"COMPLETE", "PRUNED"} and "PRUNED" in states(study), states(study)
    first = study.trials[0]
    assert first.user_attrs["is_base_config"] is True  # the untuned base config runs first, as the reference
    assert first.params == {"model.learning_rate": pytest.approx(2e-3)}
    for trial in study.trials:
        assert trial.user_attrs["steps"] == (40 if trial.state.name == "COMPLETE" else max(trial.intermediate_values))
        assert trial.user_attrs["tokens"] > 0 and trial.user_attrs["trainable_params"] > 0
        assert trial.user_attrs["base_model"] == f"micro-{RECIPES['micro'].fingerprint()}@{weights}"  # what it trained
        assert sorted(trial.intermediate_values)[0] == 10  # reported by global step, not by epoch
        if trial.state.name == "PRUNED":
            assert trial.user_attrs["steps"] < 40 and "pruned at step" in trial.user_attrs["reason"]
    assert f"{N_TRIALS}/{N_TRIALS} done" in result.stdout and "best " in result.stdout


def test_every_result_file_is_written(finished):
    root, _, _ = finished
    study = load(root)
    trials = pd.read_csv(root / "data" / STUDY / "trials.csv")
    assert list(trials["number"]) == list(range(N_TRIALS))
    assert list(trials["state"]) == states(study)
    assert {"value", "duration_s", "steps", "tokens", "params_model.learning_rate"} <= set(trials.columns)
    curves = pd.read_csv(root / "data" / STUDY / "curves.csv")
    assert len(curves) == sum(len(trial.intermediate_values) for trial in study.trials)
    configs = sorted(path.name for path in (root / "configs" / STUDY).iterdir())
    ranked = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: (-t.value, t.number))
    assert configs == sorted(["best.yaml", *(f"rank{r:02d}_t{t.number:04d}.yaml" for r, t in enumerate(ranked[:2], 1))])
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == root / "runs" / STUDY / f"t{trial.number:04d}"
        assert (run_dir / "config.yaml").is_file()
        if trial.state.name == "COMPLETE":  # a prune at a validation stops before that validation's checkpoint
            assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "adapter").is_dir()


def test_trial_counts_and_states_agree_across_optuna_mlflow_and_wandb(finished):
    root, _, _ = finished
    study = load(root)
    runs = find_runs(root / "runs", study=STUDY)
    assert len(runs) == N_TRIALS
    for run_dir in runs:
        assert check_run(run_dir).problems == []
    client = MlflowClient(study.trials[0].user_attrs["mlflow_tracking_uri"])
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[trial.state.name]
        assert run.data.tags["lit_tuning.state"] == {"COMPLETE": "completed", "PRUNED": "pruned"}[trial.state.name]
        assert run.data.tags["mlflow.runName"] == f"{STUDY}/t{trial.number:04d}"
    parent_id = client.get_run(study.trials[0].user_attrs["mlflow_run_id"]).data.tags["mlflow.parentRunId"]
    parent = client.get_run(parent_id)
    assert parent.data.tags[STUDY_PARENT_TAG] == STUDY and parent.info.status == "FINISHED"


def test_best_yaml_replays_the_best_trial(finished, tmp_path):
    root, _, _ = finished
    study = load(root)
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    config = root / "configs" / STUDY / "best.yaml"
    assert f"trial {best.number} " in config.read_text()
    env = {**os.environ, "OMP_NUM_THREADS": str(best.user_attrs["threads"])}
    result = subprocess.run(
        [sys.executable, "-m", "lit_tuning", "fit", "--config", "configs/base.yaml", "--config", str(config),
         "--trainer.default_root_dir", str(tmp_path), "--run_name", "replay", "--tracking.root", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = pd.read_csv(tmp_path / "replay" / "metrics.csv")
    replayed = metrics["val/letter_position_accuracy"].dropna().iloc[-1]
    assert math.isclose(replayed, best.value, abs_tol=1e-9), (replayed, best.value)


def test_status_prints_the_live_table(finished):
    root, _, _ = finished
    result = subprocess.run(
        [sys.executable, "-m", "lit_tuning.sweep", "status", f"--storage={sqlite_url(root)}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"study '{STUDY}'" in result.stdout and "PRUNED" in result.stdout and "learning_rate" in result.stdout
    assert len([line for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]) == N_TRIALS


def test_report_reads_the_real_study(finished):
    root, _, _ = finished
    result = subprocess.run(
        [sys.executable, "-m", "lit_tuning.analysis.report", f"--storage={sqlite_url(root)}", f"--root={root}",
         f"--spaces-dir={root / 'spaces'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    html = (root / "reports" / f"{STUDY}.html").read_text()
    best = max(t.value for t in load(root).trials if t.state.name == "COMPLETE")
    assert f"{best:.4f}" in html and "data:image/png;base64," in html  # the report's own precision
    assert len(list((root / "figures" / STUDY).glob("*.png"))) >= 5
    assert (root / "data" / STUDY / "trials.csv").is_file()  # the sweep's own table is left in place


@pytest.mark.slow  # end to end, ~70 s on 2 cores: `make test-all` (CI) runs it
def test_rerun_continues_to_the_total_budget_not_n_more(finished):
    root, space, _ = finished
    again = run_sweep(space, root, sqlite_url(root), "--workers=1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(load(root).trials) == N_TRIALS  # finished study: nothing more runs
    bigger = run_sweep(space, root, sqlite_url(root), "--workers=1", f"--n-trials={N_TRIALS + 1}")
    assert bigger.returncode == 0, bigger.stderr[-2000:]
    study = load(root)
    assert len(study.trials) == N_TRIALS + 1 and study.user_attrs["budget"] == N_TRIALS + 1
    assert len({trial.params["model.learning_rate"] for trial in study.trials}) == N_TRIALS + 1


@pytest.mark.slow  # end to end, ~42 s on 2 cores: `make test-all` (CI) runs it
def test_parallel_grid_runs_every_point_exactly_once(tmp_path, model_cache):
    learning_rates, ranks = [1.0e-3, 1.0e-2], [2, 4]
    space = write_space(
        tmp_path,
        "grid",
        {"trainer.max_steps": 20},
        strategy="grid",
        n_trials=None,
        parameters={"model.learning_rate": {"candidates": learning_rates}, "model.lora_r": {"candidates": ranks}},
    )
    result = run_sweep(space, tmp_path, sqlite_url(tmp_path), "--workers=2")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    study = load(tmp_path, "grid")
    points = sorted((t.params["model.learning_rate"], t.params["model.lora_r"]) for t in study.trials)
    assert points == sorted((lr, r) for lr in learning_rates for r in ranks)
    assert set(states(study)) == {"COMPLETE"}
    assert {t.user_attrs["worker"] for t in study.trials} == {"worker-0", "worker-1"}
    assert {t.user_attrs["threads"] for t in study.trials} == {max(1, len(os.sched_getaffinity(0)) // 2)}


@pytest.mark.slow  # end to end, ~39 s on 2 cores: `make test-all` (CI) runs it
def test_seed_oat_design_runs_as_a_study(tmp_path, model_cache):
    space = write_space(
        tmp_path,
        "oat",
        {"trainer.max_steps": 10, "model.lora_r": 4, "model.learning_rate": 2.0e-3},
        strategy="oat",
        n_trials=None,
        parameters={"model.learning_rate": {"candidates": [2.0e-3, 1.0e-2]}, "model.lora_r": {"candidates": [4, 8]}},
    )
    result = run_sweep(space, tmp_path, sqlite_url(tmp_path), "--workers=1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    study = load(tmp_path, "oat")
    points = [(t.params["model.learning_rate"], t.params["model.lora_r"]) for t in study.trials]
    assert points == [(2.0e-3, 4), (1.0e-2, 4), (2.0e-3, 8)]  # the centre, then one parameter at a time


@pytest.mark.slow  # end to end, ~35 s on 2 cores: `make test-all` (CI) runs it
def test_diverged_trial_is_pruned_with_the_reason_and_the_study_goes_on(tmp_path, model_cache):
    space = write_space(
        tmp_path,
        "nan",
        {"trainer.max_steps": 10, "model.warmup_steps": 0, "trainer.log_every_n_steps": 1},
        strategy="grid",
        n_trials=None,
        parameters={"model.learning_rate": {"candidates": [1.0e30, 2.0e-3]}},
    )
    result = run_sweep(space, tmp_path, sqlite_url(tmp_path), "--workers=1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    diverged, healthy = load(tmp_path, "nan").trials
    assert diverged.state.name == "PRUNED" and "train/loss is nan" in diverged.user_attrs["reason"]
    assert diverged.user_attrs["steps"] < 10
    assert healthy.state.name == "COMPLETE"
    run = MlflowClient(diverged.user_attrs["mlflow_tracking_uri"]).get_run(diverged.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["lit_tuning.state"] == "pruned"
    assert json.loads((Path(diverged.user_attrs["run_dir"]) / "tracking.json").read_text())["study"] == "nan"


def wait_for_checkpoint(storage: str, name: str, min_step: int, timeout: float = 600) -> optuna.trial.FrozenTrial:
    """Poll the study until a running trial has saved a checkpoint at min_step or later; return that trial."""
    from lit_tuning.sweep.objective import checkpoint_step

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the driver has not created the study yet
            running = []
        for trial in running:
            checkpoint = Path(trial.user_attrs.get("run_dir", "/nonexistent")) / "checkpoints" / "last.ckpt"
            if (checkpoint_step(checkpoint) or 0) >= min_step:
                return trial
        time.sleep(0.5)
    raise AssertionError(f"no trial of {name} reached a checkpoint at step {min_step}")


def start_sweep(space: Path, root: Path, *extra: str) -> subprocess.Popen:
    """Start a sweep driver in its own process group, its output in root/driver.log."""
    with open(root / "driver.log", "a") as log:
        return subprocess.Popen(
            sweep_command(space, root, sqlite_url(root), *extra), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def first_train_step(trial: optuna.trial.FrozenTrial) -> int:
    """The first training step a trial's own run logged (a resumed one starts after its checkpoint)."""
    metrics = pd.read_csv(Path(trial.user_attrs["run_dir"]) / "metrics.csv")
    return int(metrics.dropna(subset=["train/loss"])["step"].min())


def resumed_trial(study: optuna.Study, original: int) -> optuna.trial.FrozenTrial:
    """The trial that retried `original` and finished."""
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == original and t.state.name == "COMPLETE"]
    return retry


@pytest.mark.slow
def test_killed_worker_is_retried_from_its_checkpoint_and_its_runs_are_closed(tmp_path, model_cache):
    space = write_space(tmp_path, "killed", {"trainer.max_steps": 60}, n_trials=2)
    driver = start_sweep(space, tmp_path, "--workers=1", "--heartbeat=1")
    victim = wait_for_checkpoint(sqlite_url(tmp_path), "killed", min_step=20)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver first, so that nothing respawns the worker
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    driver.wait()
    result = run_sweep(space, tmp_path, sqlite_url(tmp_path), "--workers=1", "--heartbeat=1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = load(tmp_path, "killed")
    killed = study.trials[victim.number]
    assert killed.state.name == "FAIL" and not killed.user_attrs.get("reason")
    table = pd.read_csv(tmp_path / "data" / "killed" / "trials.csv").set_index("number")
    assert table.loc[victim.number, "reason"] == "worker died during the trial (no heartbeat)"
    retry = resumed_trial(study, victim.number)
    assert retry.user_attrs["resumed_from_step"] >= 20 and retry.user_attrs["steps"] == 60
    # The restore itself, not only what was read before `fit`: a restart from step 0 logs a step below 10 first.
    assert first_train_step(retry) >= retry.user_attrs["resumed_from_step"] >= 20
    assert retry.params == killed.params
    assert sorted(retry.intermediate_values) == [10, 20, 30, 40, 50, 60]  # the killed attempt's points are kept
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2  # the budget, not one more
    client = MlflowClient(retry.user_attrs["mlflow_tracking_uri"])
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    runs = find_runs(tmp_path / "runs", study="killed")
    assert len(runs) == len(study.trials) == 3
    for run_dir in runs:
        assert check_run(run_dir).problems == [], run_dir


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_resumes_from_the_checkpoint(tmp_path, model_cache):
    # 200 steps: room for the SIGINT to land mid-trial on a busy machine
    space = write_space(tmp_path, "stopped", {"trainer.max_steps": 200}, n_trials=1)
    driver = start_sweep(space, tmp_path, "--workers=1")
    victim = wait_for_checkpoint(sqlite_url(tmp_path), "stopped", min_step=20)
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=300) == 130
    log = (tmp_path / "driver.log").read_text()
    assert "re-run the same command" in log
    study = load(tmp_path, "stopped")
    stopped = study.trials[victim.number]
    assert stopped.state.name == "FAIL" and stopped.user_attrs["reason"] == "interrupted"
    written = pd.read_csv(tmp_path / "data" / "stopped" / "trials.csv")  # results are written on interrupt too
    assert written.set_index("number").loc[victim.number, "reason"] == "interrupted"
    run = MlflowClient(stopped.user_attrs["mlflow_tracking_uri"]).get_run(stopped.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["lit_tuning.state"] == "interrupted"
    result = run_sweep(space, tmp_path, sqlite_url(tmp_path), "--workers=1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = load(tmp_path, "stopped")
    retry = resumed_trial(study, victim.number)
    assert retry.user_attrs["resumed_from_step"] >= 20 and retry.user_attrs["steps"] == 200
    assert first_train_step(retry) >= retry.user_attrs["resumed_from_step"] >= 20
    assert len(study.trials) == 2


@pytest.mark.slow
def test_two_machines_share_a_postgresql_study_without_duplicates(tmp_path, model_cache):
    require_postgres()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    space = write_space(tmp_path, name, {"trainer.max_steps": 20}, n_trials=4)
    try:
        machines = [
            subprocess.Popen(
                sweep_command(space, tmp_path / f"machine{index}", POSTGRES_URL, "--workers=1"),
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for index in range(2)
        ]  # fmt: skip
        outputs = [machine.communicate(timeout=900)[0] for machine in machines]
        assert [machine.returncode for machine in machines] == [0, 0], outputs
        study = optuna.load_study(study_name=name, storage=POSTGRES_URL)
        assert len(study.trials) == 4 and set(states(study)) == {"COMPLETE"}
        assert len({trial.params["model.learning_rate"] for trial in study.trials}) == 4
        assert len({trial.user_attrs["worker_pid"] for trial in study.trials}) >= 2  # both machines worked
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)


@pytest.mark.slow
def test_the_driver_replaces_a_dead_worker_and_keeps_why_its_trial_died(tmp_path, model_cache):
    space = write_space(tmp_path, "respawn", {"trainer.max_steps": 60}, n_trials=2)
    driver = start_sweep(space, tmp_path, "--workers=1", "--heartbeat=1")
    victim = wait_for_checkpoint(sqlite_url(tmp_path), "respawn", min_step=20)
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)  # the driver lives on and must start another worker
    assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    study = load(tmp_path, "respawn")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2
    assert resumed_trial(study, victim.number).user_attrs["worker_pid"] != victim.user_attrs["worker_pid"]
    reason = pd.read_csv(tmp_path / "data" / "respawn" / "trials.csv").set_index("number").loc[victim.number, "reason"]
    assert f"worker-0 (pid {victim.user_attrs['worker_pid']}) killed by SIGKILL during the trial" in reason


@pytest.mark.slow
def test_failures_stop_the_study_at_max_failures_with_a_nonzero_exit_and_the_reasons(tmp_path, model_cache):
    from lit_tuning.train.base_model import resolve_model_path

    broken = tmp_path / "cache" / "base_models" / Path(resolve_model_path("embedded:micro")).name
    shutil.copytree(resolve_model_path("embedded:micro"), broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])  # every trial fails loading the model
    space = write_space(tmp_path, "broken", n_trials=3)
    cache = {"LIT_TUNING_CACHE": str(broken.parents[1])}
    result = run_sweep(space, tmp_path, sqlite_url(tmp_path), "--workers=1", "--max-failures=2", env=cache)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    study = load(tmp_path, "broken")
    assert states(study) == ["FAIL", "FAIL"]  # stopped at the limit, not at the budget of 3
    assert "error: study 'broken' stopped before its budget: 2 trial(s) failed, 0 finished; reasons: 2 x " in (
        result.stderr
    )
    assert study.trials[0].user_attrs["reason"].split(";")[0] in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_no_trial_starts_after_the_timeout_and_a_rerun_continues(tmp_path, model_cache):
    space = write_space(tmp_path, "late", {"trainer.max_steps": 10}, n_trials=2)
    result = run_sweep(space, tmp_path, sqlite_url(tmp_path), "--workers=1", "--timeout=0.01")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert states(load(tmp_path, "late")) == ["WAITING"]  # only the base config queued at creation; none started
    assert "study 'late' is not finished (0/2): re-run the same command to continue it" in result.stdout
    again = run_sweep(space, tmp_path, sqlite_url(tmp_path), "--workers=1", "--timeout=3600")
    assert again.returncode == 0 and states(load(tmp_path, "late")) == ["COMPLETE", "COMPLETE"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_parallel_sampling_workers_keep_the_budget_on_sqlite(tmp_path, model_cache, strategy):
    space = write_space(tmp_path, strategy, {"trainer.max_steps": 10}, strategy=strategy, n_trials=5)
    result = run_sweep(space, tmp_path, sqlite_url(tmp_path), "--workers=2")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    study = load(tmp_path, strategy)
    assert states(study) == ["COMPLETE"] * 5  # exactly the budget, though two workers asked at once
    assert len({trial.params["model.learning_rate"] for trial in study.trials}) == 5
    assert {trial.user_attrs["worker"] for trial in study.trials} == {"worker-0", "worker-1"}


@pytest.mark.slow
def test_a_postgresql_restart_mid_study_loses_nothing(tmp_path, model_cache):
    with private_postgres() as server:
        space = write_space(tmp_path, "restarted", {"trainer.max_steps": 60}, n_trials=2)
        with open(tmp_path / "driver.log", "w") as log:
            driver = subprocess.Popen(
                sweep_command(space, tmp_path, server.url, "--workers=1", "--heartbeat=2"), cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for_checkpoint(server.url, "restarted", min_step=20)
        server.restart()  # mid-trial: every open connection of the driver and the worker is dropped
        assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-4000:]
        study = optuna.load_study(study_name="restarted", storage=server.url)
        assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2
        assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
        assert (tmp_path / "data" / "restarted" / "trials.csv").is_file()


def test_machines_opening_an_empty_postgresql_database_at_once_all_get_the_storage():
    """The first sweeps on a new database race to create Optuna's schema; each must open it, none may fail."""
    require_postgres()
    database = f"lt_race_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{database}"
    opener = "import sys; from lit_tuning.sweep.storage import open_storage; open_storage(sys.argv[1]); print('opened')"
    try:
        machines = [
            subprocess.Popen([sys.executable, "-c", opener, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
            for _ in range(6)
        ]  # fmt: skip
        outputs = [machine.communicate(timeout=300)[0] for machine in machines]
        assert [machine.returncode for machine in machines] == [0] * 6, outputs
        assert all(output.strip().endswith("opened") for output in outputs)
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        admin.dispose()


def test_a_base_file_edited_mid_study_reaches_no_later_trial_and_a_rerun_refuses_it(tmp_path, model_cache):
    base = tmp_path / "base.yaml"
    space = with_base_file(write_space(tmp_path, "edited", n_trials=3), base)
    driver = start_sweep(space, tmp_path, "--workers=1")
    first_trial = tmp_path / "runs" / "edited" / "t0000"
    deadline = time.monotonic() + 300
    while not first_trial.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    base.write_text(base.read_text().replace("lora_dropout: 0.05", "lora_dropout: 0.1"))  # while t0000 trains
    assert driver.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    runs = sorted((tmp_path / "runs" / "edited").glob("t*"))
    dropouts = [yaml.safe_load((run / "config.yaml").read_text())["model"]["lora_dropout"] for run in runs]
    assert dropouts == [0.05, 0.05, 0.05]
    result = run_sweep(space, tmp_path, sqlite_url(tmp_path), "--workers=1", "--n-trials=4")
    assert result.returncode == 2
    assert "base model.lora_dropout: stored 0.05, given 0.1" in result.stderr, result.stderr[-3000:]
    assert len(load(tmp_path, "edited").trials) == 3
