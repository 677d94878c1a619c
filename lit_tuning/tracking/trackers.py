"""One run's trackers: build the MLflow and W&B loggers, tag and record them, and close them truthfully."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers.logger import Logger
from wandb.sdk.lib.runid import generate_id  # the id wandb.init would pick

from lit_tuning.files import atomic_write
from lit_tuning.mappings import flatten
from lit_tuning.tracking.mlflow_tracker import MLflowTracker
from lit_tuning.tracking.outcome import Outcome
from lit_tuning.tracking.settings import TRACKING_RECORD, TrackingSettings
from lit_tuning.tracking.wandb_tracker import WandbTracker

# Trackers of this process not yet finalized: an exception outside the Trainer (before fit starts, a Ctrl-C
# during setup) never reaches Lightning's hooks, and these runs must not be left RUNNING.
_open_trackers: list[MLflowTracker | WandbTracker] = []


def build_trackers(
    settings: TrackingSettings,
    *,
    run_dir: Path,
    job_type: str,
    config: Mapping[str, Any],
    accelerator: str,
    metric: str,
) -> list[Logger]:
    """Create the MLflow and W&B loggers of one run, recording in <run_dir>/tracking.json where each one writes.

    The record is rewritten (atomically) as soon as each run exists, and the W&B id is chosen and recorded before
    its run starts, so that a process killed at any instant leaves runs the sweep can find and close.
    """
    name = settings.run_name(run_dir.name)
    tags = run_tags(settings, run_dir=run_dir, job_type=job_type, accelerator=accelerator)
    record: dict[str, Any] = {"run_name": name, "study": settings.study, "trial": settings.trial, "metric": metric}
    record_path = run_dir / TRACKING_RECORD
    trackers: list[Logger] = []
    if settings.mlflow:
        trackers.append(_start_mlflow(settings, name, tags, config, record, record_path))
    if settings.resolved_wandb_mode() != "disabled":
        trackers.append(_start_wandb(settings, name, tags, job_type, config, record, record_path))
    atomic_write(record_path, json.dumps(record, indent=2) + "\n")
    return trackers


def _start_mlflow(
    settings: TrackingSettings,
    name: str,
    tags: dict[str, str],
    config: Mapping[str, Any],
    record: dict[str, Any],
    record_path: Path,
) -> MLflowTracker:
    """Create the MLflow run, record its id at once, then log the config."""
    tracker = MLflowTracker(
        tracking_uri=settings.resolved_mlflow_uri(),
        experiment=settings.mlflow_experiment,
        run_name=name,
        tags=tags,
        artifact_location=settings.artifact_location(),
        study=settings.study,
    )
    _open_trackers.append(tracker)
    record["mlflow"] = {"tracking_uri": tracker.tracking_uri, "experiment_id": tracker.name, "run_id": tracker.version}
    atomic_write(record_path, json.dumps(record, indent=2) + "\n")
    tracker.log_config(flatten(config))
    return tracker


def _start_wandb(
    settings: TrackingSettings,
    name: str,
    tags: dict[str, str],
    job_type: str,
    config: Mapping[str, Any],
    record: dict[str, Any],
    record_path: Path,
) -> WandbTracker:
    """Choose and record the W&B run id before the run starts, then start it and record its run file."""
    mode = settings.resolved_wandb_mode()
    record["wandb"] = {
        "mode": mode,
        "run_id": generate_id(),
        "run_file": "",
        "project": settings.resolved_wandb_project(),
        "dir": str(settings.wandb_dir()),
    }
    atomic_write(record_path, json.dumps(record, indent=2) + "\n")
    tracker = WandbTracker(
        mode=mode,
        project=settings.resolved_wandb_project(),
        entity=settings.resolved_wandb_entity(),
        save_dir=settings.wandb_dir(),
        run_id=record["wandb"]["run_id"],
        run_name=name,
        group=settings.study,
        job_type="trial" if settings.trial is not None else job_type,
        tags=tags,
        config=config,
    )
    _open_trackers.append(tracker)
    record["wandb"]["run_file"] = str(tracker.run_file() or "")
    return tracker


def close_open_trackers(exception: BaseException | None = None) -> None:
    """Finalize every tracker this process opened and did not close, with the outcome the exception implies."""
    outcome = Outcome.from_exception(exception) if exception is not None else Outcome()
    while _open_trackers:
        tracker = _open_trackers.pop()
        if tracker.outcome is None:
            tracker.outcome = outcome
        tracker.finalize("failed" if exception is not None else "success")


def run_tags(settings: TrackingSettings, *, run_dir: Path, job_type: str, accelerator: str) -> dict[str, str]:
    """Return the tags both trackers carry: what ran, where, from which code."""
    tags = {
        "lit_tuning.run_dir": str(run_dir.resolve()),
        "lit_tuning.job_type": job_type,
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "device": describe_device(accelerator),
    }
    for key in ("study", "trial", "sampler"):
        value = getattr(settings, key)
        if value is not None:
            tags[key] = str(value)
    return tags


def git_commit() -> str:
    """Return the commit of the working tree (with +dirty when it has uncommitted changes), or unknown."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def describe_device(accelerator: str) -> str:
    """Name the device a run trains on: the GPU model, or cpu."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


class TrackingCallback(pl.Callback):
    """Tells the trackers how a run ended and uploads the run's config and adapter before they close."""

    def __init__(self, run_dir: Path, settings: TrackingSettings) -> None:
        self.run_dir = run_dir
        self.settings = settings

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Record a prune, an interrupt or a failure, so the trackers do not all call it FAILED."""
        outcome = Outcome.from_exception(exception)
        for tracker in _trackers(trainer):
            tracker.outcome = outcome

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Upload config, split and adapter (the adapter was saved by the callback before this one)."""
        if not trainer.is_global_zero:
            return
        adapter = self.run_dir / "adapter"
        for tracker in _trackers(trainer):
            if isinstance(tracker, MLflowTracker):
                for name in ("config.yaml", "data_split.json"):
                    tracker.log_artifacts(self.run_dir / name)
                if self.settings.log_adapter and adapter.is_dir():
                    tracker.log_artifacts(adapter, "adapter")
            elif isinstance(tracker, WandbTracker) and self.settings.log_adapter and adapter.is_dir():
                tracker.log_artifact_dir(adapter, f"adapter-{self.run_dir.name}", self.settings.max_artifact_mb)


def _trackers(trainer: pl.Trainer) -> list[MLflowTracker | WandbTracker]:
    return [logger for logger in trainer.loggers if isinstance(logger, MLflowTracker | WandbTracker)]
