"""Dual tracking against the real things: the MLflow store, W&B offline run files, statuses, verify, secrets."""

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
import requests
from conftest import ROOT, micro_args, run_cli
from mlflow import MlflowClient
from sweep_helpers import run_sweep, sqlite_url, write_space
from web_helpers import chromium, mlflow_server, rendered_dom, screenshot

from lit_tuning.tracking import TrackingSettings, WandbTracker
from lit_tuning.tracking.cli import main as tracking_main
from lit_tuning.tracking.mlflow_study import study_trial_runs
from lit_tuning.tracking.wandb_reader import read_wandb_run
from lit_tuning.train.metrics import PRIMARY_METRIC

FAKE_SECRETS = {
    "WANDB_API_KEY": "fake0123456789secretkey0123456789abcdef",
    "SERVICE_TOKEN": "tok-SECRET-4242-do-not-log",
}
ENDINGS = {
    "done": [],
    "pruned": ["--trainer.callbacks+=callbacks.EndRunAtStep", "--trainer.callbacks.step=15",
               "--trainer.callbacks.how=pruned"],
    "crash": ["--trainer.callbacks+=callbacks.EndRunAtStep", "--trainer.callbacks.step=15",
              "--trainer.callbacks.how=crash"],
}  # fmt: skip


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path) -> dict:
    """Three micro runs into one store, ending completed, pruned and crashed, with fake secrets in the env."""
    root = tmp_path_factory.mktemp("tracked")
    env = {**os.environ, **FAKE_SECRETS, "PYTHONPATH": str(Path(__file__).parent)}
    env.pop("WANDB_MODE", None)
    results = {}
    for name, extra in ENDINGS.items():
        results[name] = run_cli("fit", *micro_args(root / "runs", "--run_name", name, *extra), env=env)
    records = {name: json.loads((root / "runs" / name / "tracking.json").read_text()) for name in ENDINGS}
    client = MlflowClient(records["done"]["mlflow"]["tracking_uri"])
    return {"root": root, "results": results, "records": records, "client": client}


def mlflow_run(tracked: dict, name: str):
    return tracked["client"].get_run(tracked["records"][name]["mlflow"]["run_id"])


def wandb_run(tracked: dict, name: str):
    return read_wandb_run(Path(tracked["records"][name]["wandb"]["run_file"]))


def test_exit_codes_follow_the_outcome(tracked):
    assert tracked["results"]["done"].returncode == 0
    assert tracked["results"]["crash"].returncode != 0
    assert "simulated crash" in tracked["results"]["crash"].stderr


def test_mlflow_holds_the_completed_run(tracked):
    run = mlflow_run(tracked, "done")
    assert (run.info.status, run.info.run_name) == ("FINISHED", "done")
    assert run.data.tags["lit_tuning.state"] == "completed"
    assert {"git_commit", "host", "device", "lit_tuning.run_dir"} <= set(run.data.tags)
    params = run.data.params
    assert params["model.lora_r"] == "16" and params["model.model_name_or_path"] == "embedded:micro"
    assert params["data.prompt"] == "What is letter {position} of {word}? Answer:"
    assert len(params) > 50  # the whole resolved config, not the module's subset
    csv = pd.read_csv(tracked["root"] / "runs" / "done" / "metrics.csv")
    client, run_id = tracked["client"], run.info.run_id
    for metric in ("train/loss", PRIMARY_METRIC):
        history = client.get_metric_history(run_id, metric)
        logged = csv[["step", metric]].dropna()
        assert [m.step for m in history] == logged["step"].tolist()  # every point stored
        assert [m.value for m in history] == pytest.approx(logged[metric].tolist())
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "adapter")
    }
    assert {"config.yaml", "data_split.json", "adapter/adapter_model.safetensors"} <= artifacts


def test_wandb_holds_the_same_run(tracked):
    record = wandb_run(tracked, "done")
    assert (record.name, record.job_type, record.exit_code) == ("done", "fit", 0)
    assert record.config["model"]["lora_r"] == 16
    assert record.summary["lit_tuning.state"] == "completed"
    assert any(tag.startswith("git_commit=") for tag in record.tags)
    mlflow_history = tracked["client"].get_metric_history(mlflow_run(tracked, "done").info.run_id, PRIMARY_METRIC)
    wandb_history = [row[PRIMARY_METRIC] for row in record.history if PRIMARY_METRIC in row]
    assert wandb_history == pytest.approx([m.value for m in mlflow_history])


def test_a_pruned_run_is_killed_not_failed(tracked):
    run = mlflow_run(tracked, "pruned")
    assert run.info.status == "KILLED"
    assert run.data.tags["lit_tuning.state"] == "pruned"
    record = wandb_run(tracked, "pruned")
    assert record.summary["lit_tuning.state"] == "pruned" and record.exit_code == 0


def test_a_crash_is_failed_with_its_reason(tracked):
    run = mlflow_run(tracked, "crash")
    assert run.info.status == "FAILED"
    assert "RuntimeError: simulated crash at step 15" in run.data.tags["lit_tuning.error"]
    record = wandb_run(tracked, "crash")
    assert record.exit_code == 1
    assert "simulated crash" in record.summary["lit_tuning.error"]


def test_no_secret_reaches_any_written_file(tracked):
    leaks = []
    for path in tracked["root"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [f"{path}: {key}" for key, value in FAKE_SECRETS.items() if value.encode() in data]
    assert not leaks


def test_verify_agrees_then_catches_a_deleted_run(tracked, capsys):
    runs_root = str(tracked["root"] / "runs")
    verify = ["verify", "--runs-root", runs_root, "--tracking-root", str(tracked["root"] / "tracking")]
    assert tracking_main(verify) == 0
    table = capsys.readouterr().out
    assert "3 runs checked, 0 with problems" in table
    run_id = tracked["records"]["done"]["mlflow"]["run_id"]
    tracked["client"].delete_run(run_id)
    try:
        assert tracking_main(verify) == 1
        assert f"MLflow run {run_id} is deleted" in capsys.readouterr().out
    finally:
        tracked["client"].restore_run(run_id)


def test_offline_wandb_does_not_change_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    settings = TrackingSettings(root=str(tmp_path))
    tracker = WandbTracker(
        mode=settings.resolved_wandb_mode(), project="p", entity=None, save_dir=settings.wandb_dir(),
        run_name="env-check", group=None, job_type="fit", tags={}, config={},
    )  # fmt: skip
    tracker.log_metrics({"x": 1.0}, step=0)
    tracker.finalize("success")
    assert "WANDB_MODE" not in os.environ
    assert read_wandb_run(tracker.run_file()).exit_code == 0


@pytest.mark.parametrize(
    ("env", "explicit", "expected"),
    [({}, None, "offline"), ({"WANDB_MODE": "dryrun"}, None, "offline"), ({"WANDB_MODE": "disabled"}, None,
     "disabled"), ({"WANDB_MODE": "disabled"}, "online", "online")],
)  # fmt: skip
def test_wandb_mode_comes_from_config_then_environment(env, explicit, expected, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert TrackingSettings(wandb_mode=explicit).resolved_wandb_mode() == expected


def test_a_bad_wandb_mode_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "sideways")
    with pytest.raises(ValueError, match="WANDB_MODE is 'sideways'; allowed: offline, online, disabled"):
        TrackingSettings().resolved_wandb_mode()


@pytest.fixture(scope="module")
def tracked_server(tracked: dict) -> str:
    """A real `mlflow server` on 127.0.0.1 over the tracked runs' store; yields its URL, then stops it."""
    with mlflow_server(tracked["records"]["done"]["mlflow"]["tracking_uri"], tracked["root"] / "served") as url:
        yield url


def test_the_server_serves_every_run_over_rest(tracked, tracked_server):
    experiment_id = tracked["records"]["done"]["mlflow"]["experiment_id"]
    response = requests.post(
        f"{tracked_server}/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment_id]}, timeout=30
    )
    response.raise_for_status()
    statuses = {run["info"]["run_name"]: run["info"]["status"] for run in response.json()["runs"]}
    assert statuses == {"done": "FINISHED", "pruned": "KILLED", "crash": "FAILED"}


def test_the_mlflow_ui_lists_the_runs_in_a_real_browser(tracked, tracked_server, tmp_path):
    chromium()  # skips (or fails, in CI) without a browser
    page = f"{tracked_server}/#/experiments/{tracked['records']['done']['mlflow']['experiment_id']}/runs"
    dom = rendered_dom(page, tmp_path / "dom")
    assert "Training runs" in dom
    for name in ENDINGS:
        assert f">{name}<" in dom, f"run {name} is not listed in the MLflow UI"
    assert screenshot(page, "mlflow_ui_runs.png", tmp_path / "shot").stat().st_size > 10_000


def test_ctrl_c_closes_both_runs_as_interrupted(tmp_path, micro_model_dir):
    runs = tmp_path / "runs"
    args = micro_args(runs, "--run_name", "ctrl-c", "--trainer.max_steps", "100000")
    process = subprocess.Popen(
        [sys.executable, "-m", "lit_tuning", "fit", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    record_path = runs / "ctrl-c" / "tracking.json"
    checkpoint = runs / "ctrl-c" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # into training: the first validation has saved its checkpoint
    assert checkpoint.exists(), "the fit never reached its first checkpoint"
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=180)
    assert process.returncode == 1  # what Lightning's Ctrl-C handling exits with (docs: "How a run ended")
    record = json.loads(record_path.read_text())
    run = MlflowClient(record["mlflow"]["tracking_uri"]).get_run(record["mlflow"]["run_id"])
    assert (run.info.status, run.data.tags["lit_tuning.state"]) == ("KILLED", "interrupted")
    assert read_wandb_run(Path(record["wandb"]["run_file"])).summary["lit_tuning.state"] == "interrupted"


@pytest.mark.slow  # end to end, ~32 s on 2 cores: `make test-all` (CI) runs it
def test_trials_of_a_study_are_child_runs_in_one_group(tmp_path, micro_model_dir):
    runs = tmp_path / "runs"
    for trial in (0, 1):
        study_args = ["--tracking.study", "s1", "--tracking.trial", str(trial), "--tracking.sampler", "tpe"]
        result = run_cli("fit", *micro_args(runs, "--run_name", f"t{trial:04d}", "--trainer.max_steps", "10",
                                            *study_args))  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads((runs / f"t{trial:04d}" / "tracking.json").read_text()) for trial in (0, 1)]
    client = MlflowClient(records[0]["mlflow"]["tracking_uri"])
    children = [client.get_run(record["mlflow"]["run_id"]) for record in records]
    assert [child.info.run_name for child in children] == ["s1/t0000", "s1/t0001"]
    parent_ids = {child.data.tags["mlflow.parentRunId"] for child in children}
    assert len(parent_ids) == 1
    parent = client.get_run(parent_ids.pop())
    assert parent.info.run_name == "s1"
    assert children[1].data.tags["trial"] == "1" and children[1].data.tags["sampler"] == "tpe"
    wandb_record = read_wandb_run(Path(records[1]["wandb"]["run_file"]))
    assert (wandb_record.name, wandb_record.group, wandb_record.job_type) == ("s1/t0001", "s1", "trial")


@pytest.mark.slow
def test_a_sweep_with_mlflow_uri_logs_to_a_real_mlflow_server(tmp_path, model_cache):
    served = tmp_path / "server"
    with mlflow_server(f"sqlite:///{served / 'mlflow.db'}", served / "artifacts") as url:
        space = write_space(tmp_path, "remote", {"trainer.max_steps": 20}, n_trials=2)
        result = run_sweep(space, tmp_path, sqlite_url(tmp_path), "--workers=1", f"--mlflow-uri={url}")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        study = optuna.load_study(study_name="remote", storage=sqlite_url(tmp_path))
        client = MlflowClient(url)
        runs = {run.data.tags["trial"]: run for run in study_trial_runs(client, "lit_tuning", "remote")}
        assert sorted(runs) == ["0", "1"]
        for trial in study.trials:
            run = runs[str(trial.number)]
            assert (
                trial.user_attrs["mlflow_tracking_uri"] == url and trial.user_attrs["mlflow_run_id"] == run.info.run_id
            )
            assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[trial.state.name]
            assert client.get_run(run.data.tags["mlflow.parentRunId"]).info.run_name == "remote"
            assert "config.yaml" in {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local store instead
    assert list((served / "artifacts").rglob("config.yaml"))  # the server stored the uploads
