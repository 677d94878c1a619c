"""One trial: the base experiment plus the trial's overrides, run by the `fit` CLI with step-based pruning."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch

from lit_tuning.experiment.config import Experiment
from lit_tuning.experiment.search_space import SearchSpace
from lit_tuning.experiment.strategies import suggest
from lit_tuning.paths import study_slug
from lit_tuning.sweep.pruning import StepPruningCallback
from lit_tuning.sweep.trial_record import INTERRUPTED, retry_history
from lit_tuning.tracking.settings import TRACKING_RECORD
from lit_tuning.train.base_model import model_identity
from lit_tuning.train.cli import cli_main

log = logging.getLogger("lit_tuning.sweep")
# Set by the worker's SIGINT handler: Lightning turns Ctrl-C into sys.exit(1), which must not read as a crash.
INTERRUPT_REQUESTED = threading.Event()
RANK_STOP_GRACE_S = 60.0  # how long a DDP trial's ranks may take to stop after Ctrl-C before they are killed


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """What every trial of one worker shares: the space, where runs go, and the worker's device arguments."""

    space: SearchSpace
    study_name: str
    runs_root: Path
    fit_args: tuple[str, ...] = ()  # appended to every trial's `fit` arguments (device, tracking overrides)
    worker: str = "worker-0"
    device: str = "cpu"
    devices_per_trial: int = 1  # > 1: each trial is a DDP run in its own processes (see sweep/ranks.py)
    storage_url: str = ""  # the study's storage, for the rank processes of a DDP trial
    # The space's base composed into one file when the worker started: trials read it instead of the base files, so
    # an edit to those mid-study cannot reach later trials (a re-run then refuses the changed space).
    base_config: Path | None = None


def trial_dir(runs_root: Path, study_name: str, number: int) -> Path:
    """Return results/tuning/runs/<study>/t<NNNN>: one trial's run directory."""
    return runs_root / study_slug(study_name) / f"t{number:04d}"


class TrialFacts(pl.Callback):
    """Keeps a handle on the trainer so that steps run and tokens seen can be read even after a prune or crash."""

    def __init__(self, trial: optuna.Trial, run_dir: Path) -> None:
        self.trial, self.run_dir = trial, run_dir
        self.trainer: pl.Trainer | None = None
        self.module: pl.LightningModule | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remember the trainer and module; record the tracker run ids now, so a killed attempt can be closed, and
        which base model weights the trial trains (an embedded model's build hash: results of two builds differ)."""
        self.trainer, self.module = trainer, pl_module
        for key, value in tracking_ids(self.run_dir).items():
            self.trial.set_user_attr(key, value)
        reference = pl_module.hparams.get("model_name_or_path")
        if reference is not None:
            self.trial.set_user_attr("base_model", model_identity(reference))

    def facts(self) -> dict[str, Any]:
        """Return steps, tokens and parameter counts recorded so far."""
        if self.trainer is None or self.module is None:
            return {}
        trainable, total = self.module.trainable_parameters()
        return {
            "steps": int(self.trainer.global_step),
            "tokens": int(getattr(self.module, "tokens_seen", 0)),
            "trainable_params": int(trainable),
            "total_params": int(total),
        }


class Objective:
    """The Optuna objective of a sweep: returns the trial's final validation metric."""

    def __init__(self, context: TrialContext) -> None:
        self.context = context

    def __call__(self, trial: optuna.Trial) -> float:
        """Run the trial's `fit`; record its facts as user attributes; raise TrialPruned or the failure."""
        context = self.context
        run_dir = trial_dir(context.runs_root, context.study_name, trial.number)
        retry_of, checkpoint, resume_note = self.resume_point(trial)
        self.record(
            trial,
            run_dir=str(run_dir),
            worker=context.worker,
            worker_pid=os.getpid(),
            device=context.device,
            threads=torch.get_num_threads(),  # CPU float sums depend on it: a replay uses the same count
            retry_of=retry_of,
            resumed_from_step=checkpoint_step(checkpoint) if checkpoint else None,
            resume_note=resume_note,
            reason=None,
        )
        value = self.run_fit(trial, self.fit_command(trial, run_dir, checkpoint), run_dir)
        if value is None or not math.isfinite(float(value)):
            reason = f"{context.space.metric} is {value} at the end of training"
            self.record(trial, reason=reason)
            raise optuna.TrialPruned(reason)
        return float(value)

    def fit_command(self, trial: optuna.Trial, run_dir: Path, checkpoint: Path | None) -> list[str]:
        """Return the `fit` arguments of a trial: the space's base config, its sampled values, run naming."""
        space, context = self.context.space, self.context
        base = Experiment((str(context.base_config),)) if context.base_config else space.base
        args = [
            "fit",
            *base.with_overrides(suggest(trial, space)).cli_args(),
            f"--run_name={run_dir.name}",
            f"--trainer.default_root_dir={run_dir.parent}",
            f"--tracking.study={context.study_name}",
            f"--tracking.trial={trial.number}",
            f"--tracking.sampler={space.strategy}",
            *context.fit_args,
        ]
        return [*args, f"--ckpt_path={checkpoint}"] if checkpoint is not None else args

    def run_fit(self, trial: optuna.Trial, args: list[str], run_dir: Path) -> Any:
        """Run `fit` in this process (or as DDP ranks); record why it stopped early; return its final metric."""
        metric = self.context.space.metric
        facts = TrialFacts(trial, run_dir)
        started = time.monotonic()
        try:
            if self.context.devices_per_trial > 1:
                return self.fit_across_devices(trial, args, run_dir)
            cli = cli_main(args, callbacks=[StepPruningCallback(trial, monitor=metric), facts])
            return cli.trainer.callback_metrics.get(metric)
        except optuna.TrialPruned as pruned:
            self.record(trial, reason=str(pruned))
            raise
        except SystemExit as exit_:
            if INTERRUPT_REQUESTED.is_set():
                self.record(trial, reason=INTERRUPTED)
                raise KeyboardInterrupt from None
            self.record(trial, reason=f"fit exited with code {exit_.code}; see {run_dir.parent}/worker logs")
            raise RuntimeError(f"fit exited with code {exit_.code}") from None
        except KeyboardInterrupt:
            self.record(trial, reason=INTERRUPTED)
            raise
        except torch.OutOfMemoryError as error:
            self.record(trial, reason=f"out of memory: {str(error).splitlines()[0]}")
            raise
        except Exception as error:
            self.record(trial, reason=f"{type(error).__name__}: {error}")
            raise
        finally:
            self.record(trial, duration_s=round(time.monotonic() - started, 3), **facts.facts())

    def fit_across_devices(self, trial: optuna.Trial, args: list[str], run_dir: Path) -> float | None:
        """Run a DDP trial as the `rank` command, whose ranks report through rank 0; return its final metric."""
        context = self.context
        outcome_path = run_dir.parent / f".{run_dir.name}.outcome.json"
        outcome_path.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "lit_tuning.sweep", "rank", f"--search-space={context.space.path}",
            f"--storage={context.storage_url}", f"--study={context.study_name}", f"--trial-id={trial._trial_id}",
            f"--run-dir={run_dir}", f"--outcome={outcome_path}", "--", *args,
        ]  # fmt: skip
        process = subprocess.Popen(command)
        try:
            code = process.wait()
        except KeyboardInterrupt:  # a stop request reached this worker: rank 0 stops its ranks and saves state
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=RANK_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
        if code != 0 or not outcome_path.is_file():
            raise RuntimeError(f"the DDP trial's rank 0 exited with code {code}; see the worker log")
        outcome = json.loads(outcome_path.read_text())
        outcome_path.unlink()
        if outcome["state"] == "pruned":
            raise optuna.TrialPruned(outcome["reason"])
        return outcome["value"]

    def resume_point(self, trial: optuna.Trial) -> tuple[int | None, Path | None, str | None]:
        """For a retry of a killed or interrupted trial: the original's number, the newest readable checkpoint of
        its attempts, and a note when a checkpoint was unreadable (cut short by the kill) and had to be passed over.
        """
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        history = retry_history(frozen)
        if not history:
            return None, None, None
        unreadable = []
        for number in reversed(history):  # the latest attempt got furthest
            checkpoint = trial_dir(self.context.runs_root, self.context.study_name, number) / "checkpoints/last.ckpt"
            if checkpoint_step(checkpoint) is not None:
                return history[0], checkpoint, _skipped(unreadable, f"resumed from {checkpoint} instead")
            if checkpoint.is_file():
                unreadable.append(checkpoint)
        return history[0], None, _skipped(unreadable, "restarted from step 0")

    @staticmethod
    def record(trial: optuna.Trial, **attrs: Any) -> None:
        """Store facts of the trial as Optuna user attributes (None values are skipped unless clearing a reason)."""
        for key, value in attrs.items():
            if value is not None or key in ("reason", "resume_note"):  # a retry inherits these: clear them
                trial.set_user_attr(key, value)


def checkpoint_step(checkpoint: Path) -> int | None:
    """Return the global step saved in a Lightning checkpoint, or None when it is missing or unreadable."""
    if not checkpoint.is_file():
        return None
    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # a checkpoint cut short by the kill: start that attempt over rather than crash
        return None


def _skipped(unreadable: list[Path], outcome: str) -> str | None:
    """The resume note of a retry that had to pass over unreadable checkpoints (None when there were none)."""
    if not unreadable:
        return None
    note = f"checkpoint {', '.join(map(str, unreadable))} unreadable (cut short by a kill?): {outcome}"
    log.warning(note)
    return note


def tracking_ids(run_dir: Path) -> dict[str, Any]:
    """Return the MLflow run id and tracking URI a run recorded in its tracking.json, if any."""
    record_path = run_dir / TRACKING_RECORD
    if not record_path.is_file():
        return {}
    mlflow = json.loads(record_path.read_text()).get("mlflow") or {}
    return {"mlflow_run_id": mlflow.get("run_id"), "mlflow_tracking_uri": mlflow.get("tracking_uri")}
