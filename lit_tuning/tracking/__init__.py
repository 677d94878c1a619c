"""Dual tracking: every run in MLflow and W&B, with the same names, tags, metrics and a truthful final state."""

from lit_tuning.tracking.mlflow_tracker import MLflowTracker
from lit_tuning.tracking.settings import TrackingSettings
from lit_tuning.tracking.trackers import TrackingCallback, build_trackers, close_open_trackers
from lit_tuning.tracking.wandb_tracker import WandbTracker

__all__ = [
    "MLflowTracker",
    "TrackingCallback",
    "TrackingSettings",
    "WandbTracker",
    "build_trackers",
    "close_open_trackers",
]
