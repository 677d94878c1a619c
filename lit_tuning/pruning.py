"""Step-based Optuna pruning: report the objective at every validation by global step, prune when told to."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import optuna

from lit_tuning.metrics import PRIMARY_METRIC


class StepPruningCallback(pl.Callback):
    """Reports the monitored metric to an Optuna trial at each validation, keyed by global step.

    Optuna's stock Lightning callback reports with ``step=current_epoch``: a step-based LoRA run spends its
    whole budget in one epoch, so every report after the first lands on step 0, is ignored, and nothing is
    ever pruned. Reporting by global step gives pruners one point per validation.
    """

    def __init__(self, trial: optuna.Trial, monitor: str = PRIMARY_METRIC) -> None:
        self.trial = trial
        self.monitor = monitor

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report the metric; raise optuna.TrialPruned when the pruner says so or the metric is not finite."""
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        step = trainer.global_step
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"{self.monitor} is {value} at step {step}")
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {self.monitor}={value:.4f}")
