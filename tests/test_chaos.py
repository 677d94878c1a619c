"""Faults the sweep must survive: killed trials' reasons, truncated checkpoints, edited spaces, failed studies."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sweep_helpers import ROOT, with_base_file, write_space

from lit_tuning.experiment.search_space import load_search_space
from lit_tuning.sweep.cli import main
from lit_tuning.sweep.driver import SweepDriver, SweepRun, failure_summary
from lit_tuning.sweep.objective import Objective, TrialContext, trial_dir
from lit_tuning.sweep.storage import open_storage
from lit_tuning.sweep.study import DEFINITION_ATTR, StudyMismatchError, open_study
from lit_tuning.sweep.trial_record import KILLED_REASON, record_killed_reason, trials_frame

DISTRIBUTIONS = {"model.learning_rate": optuna.distributions.FloatDistribution(1e-4, 3e-2, log=True)}


def killed_and_retried(tmp_path: Path, *, retries: int = 1) -> tuple[optuna.Study, Objective, optuna.Trial]:
    """A study whose trial 0 was killed `retries` times (FAIL + queued retry, as a stale heartbeat does); the
    last retry is popped and returned as the running trial, with an Objective over tmp_path/runs."""
    space = load_search_space(write_space(tmp_path, "s"))
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    study = open_study(space, "s", storage, 4)
    trial = study.ask()
    for _ in range(retries):
        study.tell(trial, state=TrialState.FAIL)  # no reason: what a killed worker leaves
        RetryHeartbeatStaleTrialCallback(max_retry=2)(study, study.trials[trial.number])
        trial = study.ask()
    context = TrialContext(space=space, study_name="s", runs_root=tmp_path / "runs")
    return study, Objective(context), trial


def test_a_truncated_checkpoint_restarts_the_retry_from_scratch_and_says_so(tmp_path):
    study, objective, retry = killed_and_retried(tmp_path)
    checkpoint = trial_dir(tmp_path / "runs", "s", 0) / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"global_step": 20, "state_dict": {"w": torch.zeros(1000)}}, checkpoint)
    assert objective.resume_point(retry) == (0, checkpoint, None)
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])  # what a kill during the save leaves
    retry_of, resume_from, note = objective.resume_point(retry)
    assert (retry_of, resume_from) == (0, None)
    assert str(checkpoint) in note and "unreadable" in note and "restarted from step 0" in note


def test_an_older_readable_checkpoint_is_used_when_the_newest_is_truncated(tmp_path):
    study, objective, retry = killed_and_retried(tmp_path, retries=2)
    older, newer = (trial_dir(tmp_path / "runs", "s", n) / "checkpoints" / "last.ckpt" for n in (0, 1))
    for path, step in ((older, 10), (newer, 20)):
        path.parent.mkdir(parents=True)
        torch.save({"global_step": step}, path)
    newer.write_bytes(b"")
    retry_of, resume_from, note = objective.resume_point(retry)
    assert (retry_of, resume_from) == (0, older)
    assert f"resumed from {older} instead" in note


def test_a_killed_trials_reason_survives_optuna_failing_it_and_a_given_up_trial_says_so(tmp_path):
    study, _, retry = killed_and_retried(tmp_path)
    record_killed_reason(study, 0, "worker-1 (pid 7) killed by SIGKILL during the trial; log: w.log")
    study.tell(retry, state=TrialState.FAIL)  # the retry died too, and the storage left it without a retry
    table = trials_frame(study).set_index("number")
    assert table.loc[0, "reason"] == "worker-1 (pid 7) killed by SIGKILL during the trial; log: w.log"
    assert table.loc[1, "reason"] == f"{KILLED_REASON}; given up after 2 attempts (retry limit)"


def test_a_study_in_which_every_trial_failed_is_summarised_with_its_reasons():
    study = optuna.create_study()
    for reason in ("RuntimeError: fit exited with code 1", "RuntimeError: fit exited with code 1", "out of memory"):
        trial = study.ask()
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.FAIL)
    summary = failure_summary(study)
    assert summary == (
        "3 trial(s) failed, 0 finished; reasons: 2 x RuntimeError: fit exited with code 1; 1 x out of memory"
    )


def edited(space: Path, **parameters: dict) -> Path:
    """Rewrite a space file with other parameter definitions (the same name: the same study)."""
    document = yaml.safe_load(space.read_text())
    document["parameters"] = parameters
    space.write_text(yaml.safe_dump(document, sort_keys=False))
    return space


def test_an_edited_space_is_refused_with_what_changed_unless_asked_to_continue(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    space = write_space(tmp_path, "s")
    open_study(load_search_space(space), "s", open_storage(storage), 4)
    edited(space, **{"model.learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True}})
    args = [f"--search-space={space}", f"--storage={storage}", f"--results-root={tmp_path}", "--n-trials=4"]
    assert main(args) == 2
    message = capsys.readouterr().err
    assert "study 's' was started from another version of" in message and "--continue-changed-space" in message
    assert (
        "parameter model.learning_rate: stored float in [0.0001, 0.03], log scale, "
        "given float in [0.001, 0.03], log scale"
    ) in message
    assert not (tmp_path / "runs").exists()
    learning_rate = {"low": 1.0e-4, "high": 3.0e-2, "log": True}
    edited(space, **{"model.learning_rate": learning_rate, "model.lora_r": {"candidates": [4, 8]}})
    with pytest.raises(StudyMismatchError, match="parameter model.lora_r: stored none, given one of"):
        open_study(load_search_space(space), "s", open_storage(storage), 4)
    study = open_study(load_search_space(space), "s", open_storage(storage), 4, accept_changed_space=True)
    assert "continues under a changed space: parameter model.lora_r" in capsys.readouterr().out
    assert study.user_attrs["space_definition"]["parameter model.lora_r"] == "one of [4, 8]"
    open_study(load_search_space(space), "s", open_storage(storage), 4)  # the new definition is now the study's


def test_an_edit_inside_a_base_file_is_a_change_of_the_space(tmp_path):
    storage, base = f"sqlite:///{tmp_path / 'o.db'}", tmp_path / "base.yaml"
    space = with_base_file(write_space(tmp_path, "s"), base)
    open_study(load_search_space(space), "s", open_storage(storage), 4)
    base.write_text(base.read_text().replace("lora_dropout: 0.05", "lora_dropout: 0.1"))
    with pytest.raises(StudyMismatchError, match=r"\(base model.lora_dropout: stored 0.05, given 0.1\);"):
        open_study(load_search_space(space), "s", open_storage(storage), 4)


def test_a_study_stored_by_a_version_without_some_base_keys_resumes_and_gains_them(tmp_path):
    """Studies stored before base values were (or before a config key existed) are not refused for lacking them."""
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    space = write_space(tmp_path, "s")
    study = open_study(load_search_space(space), "s", open_storage(storage), 4)
    full = study.user_attrs[DEFINITION_ATTR]
    older = {key: value for key, value in full.items() if key != "base model.use_rslora"}
    study.set_user_attr(DEFINITION_ATTR, older)
    study = open_study(load_search_space(space), "s", open_storage(storage), 4)
    assert study.user_attrs[DEFINITION_ATTR] == full
    assert full["base model.use_rslora"] == "False" and full["base data.num_words"] == "300"


@pytest.mark.slow
def test_chaos_harness_kills_a_study_three_times_and_nothing_is_lost(tmp_path, model_cache):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lit_tuning.bench.chaos", "--kills=3", "--trials=2", "--steps=30",
               f"--out={out}", f"--work={tmp_path / 'work'}", "--seed=1"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    figures = json.loads((out / "chaos.json").read_text())
    assert figures["kills"] == 3 and figures["kill_log"][0]["point"] == "startup", figures["kill_log"]
    assert figures["failed_attempts"] >= 1  # a worker or the driver was killed mid-trial at least once
    assert figures["finished"] == figures["budget"] == 2
    assert figures["steps_minimum"] == 2 * 30 and figures["steps_computed"] >= figures["steps_minimum"]
    assert all(figures["checks"].values()), figures["checks"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@contextlib.contextmanager
def mounted(target: Path, *options: str) -> Iterator[Path]:
    """Mount a real file system at target for the block (a tmpfs of a given size, or a read-only bind)."""
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip()}): the fault needs a real full or read-only folder")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def test_a_read_only_results_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    source = tmp_path / "source"
    source.mkdir()
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    space = write_space(tmp_path, "s")
    with mounted(tmp_path / "ro", "--bind", str(source)) as root:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
        assert main([f"--search-space={space}", f"--storage={storage}", f"--results-root={root}"]) == 2
    message = capsys.readouterr().err
    assert f"--results-root '{root}' is not writable (Read-only file system)" in message
    assert "Traceback" not in message and list(source.iterdir()) == []
    assert not (tmp_path / "o.db").exists()  # refused before the study was created


def test_a_full_disk_keeps_the_previous_results_whole_and_the_sweep_says_so(tmp_path, capsys):
    space = load_search_space(write_space(tmp_path, "s"))
    study = optuna.create_study(study_name="s", direction="maximize")
    with mounted(tmp_path / "full", "-t", "tmpfs", "-o", "size=256k", "tmpfs") as root:
        driver = SweepDriver(SweepRun(study, space, [], [], [], 4, root, 2))
        for value in (0.1, 0.2):
            study.add_trial(optuna.create_trial(params={"model.learning_rate": 1e-3}, distributions=DISTRIBUTIONS,
                                                value=value))  # fmt: skip
        assert driver.write_results() and driver.results_error is None
        before = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
        with open(root / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:  # fill the disk to the last byte
                filler.write(b"\0" * 512)
        for value in np.linspace(0.3, 0.9, 200):  # a bigger table than what is left
            study.add_trial(optuna.create_trial(params={"model.learning_rate": 1e-3}, distributions=DISTRIBUTIONS,
                                                value=float(value)))  # fmt: skip
        assert driver.write_results() == []
        after = {path: path.read_bytes() for path in root.rglob("*") if path.is_file() and path.name != "filler"}
    assert after == before  # no truncated table, no temporary file left behind
    assert driver.results_error and "No space left on device" in driver.results_error
    message = capsys.readouterr().err
    assert "error: cannot write the results under" in message and "re-run the same command" in message
