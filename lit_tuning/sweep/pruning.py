"""Step-based Optuna pruning: report the objective at every validation by global step, prune when told to."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import optuna

from lit_tuning.train.metrics import PRIMARY_METRIC


class StepPruningCallback(pl.Callback):
    """Reports the monitored metric to an Optuna trial at each validation, keyed by global step.

    Optuna's stock Lightning callback reports with ``step=current_epoch``: a step-based LoRA run spends its
    whole budget in one epoch, so every report after the first lands on step 0, is ignored, and nothing is
    ever pruned. Reporting by global step gives pruners one point per validation.
    """

    def __init__(self, trial: optuna.Trial, monitor: str = PRIMARY_METRIC, loss: str = "train/loss") -> None:
        self.trial = trial
        self.monitor = monitor
        self.loss = loss

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        """Stop a diverged trial at once: a NaN/inf training loss never recovers, and accuracy can hide it."""
        if trainer.global_step % max(1, trainer.log_every_n_steps) or self.loss not in trainer.callback_metrics:
            return  # checked at logging steps only: reading the value synchronizes a GPU
        value = float(trainer.callback_metrics[self.loss])
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"{self.loss} is {value} at step {trainer.global_step}: training diverged")

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
