"""Trials that span devices: a 2-process DDP trial (gloo, CPU) inside a sweep completes, prunes and survives a kill."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from sweep_helpers import run_sweep, sqlite_url, states, write_space
from test_sweep import resumed_trial, start_sweep, wait_for_checkpoint

from lit_tuning.tracking.verify import check_run, find_runs

pytestmark = pytest.mark.slow
DDP = ("--devices=cpu", "--workers=1", "--devices-per-trial=2")
NO_WANDB = ("--", "--tracking.wandb_mode=disabled")


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains text (this test's own study files)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_ddp_trials_complete_and_prune_with_rank_zero_reporting(tmp_path, model_cache):
    space = write_space(
        tmp_path,
        "ddp",
        strategy="grid",
        n_trials=None,
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        parameters={"model.learning_rate": {"candidates": [1.0e-2, 1.0e-7]}},
    )
    result = run_sweep(space, tmp_path, sqlite_url(tmp_path), *DDP, *NO_WANDB, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="ddp", storage=sqlite_url(tmp_path))
    assert states(study) == ["COMPLETE", "PRUNED"], [t.user_attrs.get("reason") for t in study.trials]
    good, weak = study.trials
    assert sorted(good.intermediate_values) == [10, 20, 30, 40]  # one report per validation: rank 0 only
    assert weak.user_attrs["reason"].startswith("pruned at step") and max(weak.intermediate_values) < 40
    assert good.user_attrs["steps"] == 40 and good.user_attrs["tokens"] > 0
    runs = find_runs(tmp_path / "runs", study="ddp")
    assert len(runs) == 2  # one run directory and one tracker run per trial, not one per rank
    for run_dir in runs:
        assert check_run(run_dir).problems == [], run_dir
    log = (tmp_path / "runs" / "ddp" / "logs" / "worker-0.log").read_text()
    assert "MEMBER: 2/2" in log  # Lightning started the second rank: two processes really trained


def test_killed_ddp_trial_takes_its_ranks_along_and_is_retried(tmp_path, model_cache):
    space = write_space(tmp_path, "ddpkill", {"trainer.max_steps": 60}, n_trials=1)
    driver = start_sweep(space, tmp_path, *DDP, "--heartbeat=1", *NO_WANDB)
    victim = wait_for_checkpoint(sqlite_url(tmp_path), "ddpkill", min_step=20, timeout=1500)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver first, so that nothing respawns the worker
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 30
    while processes_mentioning(str(space)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(str(space)) == []  # rank 0 and rank 1 died with their worker
    result = run_sweep(space, tmp_path, sqlite_url(tmp_path), *DDP, "--heartbeat=1", *NO_WANDB, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = optuna.load_study(study_name="ddpkill", storage=sqlite_url(tmp_path))
    retry = resumed_trial(study, victim.number)
    assert retry.user_attrs["resumed_from_step"] >= 20 and retry.user_attrs["steps"] == 60
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 1
