"""The `tracking:` section of a run config: where MLflow and W&B record runs, resolved against the environment."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from jsonargparse.typing import restricted_string_type

from lit_tuning.paths import RESULTS_ROOT, SAFE_NAME

WandbMode = Literal["offline", "online", "disabled"]
TRACKING_RECORD = "tracking.json"  # in each run directory: where its MLflow and W&B runs are
# A study name is a folder name and a tracker tag that MLflow searches by: no quotes, separators or spaces.
StudyName = restricted_string_type("StudyName", f"^{SAFE_NAME.pattern}$")


@dataclasses.dataclass
class TrackingSettings:
    """Where and how a run is tracked; unset values come from the environment, then from the defaults.

    Args:
        root: folder of the local stores: <root>/mlflow.db, <root>/mlflow-artifacts, <root>/wandb.
        mlflow: log to MLflow.
        mlflow_tracking_uri: MLflow store or server URL (else $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db).
        mlflow_experiment: MLflow experiment name.
        wandb_mode: offline (run files, `make wandb-sync` later), online, or disabled (else $WANDB_MODE, else offline).
        wandb_project: W&B project (else $WANDB_PROJECT, else lit_tuning).
        wandb_entity: W&B entity (team or user; else $WANDB_ENTITY).
        log_adapter: upload the trained adapter as an artifact to both trackers.
        max_artifact_mb: skip uploading an adapter larger than this (it stays in the run directory).
        study: the Optuna study a trial belongs to (set by the sweep driver).
        trial: the trial number within the study (set by the sweep driver).
        sampler: the study's sampler, recorded as a tag (set by the sweep driver).
    """

    root: str = RESULTS_ROOT.as_posix()
    mlflow: bool = True
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "lit_tuning"
    wandb_mode: WandbMode | None = None
    wandb_project: str | None = None
    wandb_entity: str | None = None
    log_adapter: bool = True
    max_artifact_mb: float = 200.0
    study: StudyName | None = None
    trial: int | None = None
    sampler: str | None = None

    def resolved_mlflow_uri(self) -> str:
        """Return the MLflow tracking URI: explicit, else the environment, else the local SQLite store."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{(Path(self.root) / 'mlflow.db').resolve()}"

    def artifact_location(self) -> str | None:
        """Return the local artifact folder for a local store; a server chooses its own."""
        uri = self.resolved_mlflow_uri()
        if uri.startswith(("http://", "https://")):
            return None
        return (Path(self.root) / "mlflow-artifacts").resolve().as_uri()

    def resolved_wandb_mode(self) -> WandbMode:
        """Return the W&B mode: explicit, else $WANDB_MODE (dryrun counts as offline), else offline."""
        mode = self.wandb_mode or os.environ.get("WANDB_MODE", "offline")
        mode = "offline" if mode == "dryrun" else mode
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"tracking.wandb_mode / $WANDB_MODE is {mode!r}; allowed: offline, online, disabled")
        return mode  # type: ignore[return-value]

    def resolved_wandb_project(self) -> str:
        """Return the W&B project: explicit, else $WANDB_PROJECT, else lit_tuning."""
        return self.wandb_project or os.environ.get("WANDB_PROJECT") or "lit_tuning"

    def resolved_wandb_entity(self) -> str | None:
        """Return the W&B entity, if any."""
        return self.wandb_entity or os.environ.get("WANDB_ENTITY") or None

    def wandb_dir(self) -> Path:
        """Return the folder under which W&B writes its `wandb/` run folders."""
        return Path(self.root).resolve()

    def run_name(self, run_name: str) -> str:
        """Return the tracker run name: `<study>/t<NNNN>` for a trial, else the run directory's name."""
        if self.study is not None and self.trial is not None:
            return f"{self.study}/t{self.trial:04d}"
        return run_name
