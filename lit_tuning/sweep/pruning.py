"""Step-based Optuna pruning: report the objective at every validation by global step, prune when told to.

In a DDP trial only rank 0 holds the trial: it reports and decides, and the decision is broadcast, so every rank
stops at the same step (a rank that went on alone would wait forever in the next all-reduce).
"""

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

    def __init__(self, trial: optuna.Trial | None, monitor: str = PRIMARY_METRIC, loss: str = "train/loss") -> None:
        """Watch `monitor` for `trial`; pass trial=None on DDP ranks other than 0."""
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
        # Each rank sees its own batch's loss: stop all ranks if any one diverged.
        if trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            raise optuna.TrialPruned(f"{self.loss} is {value} at step {trainer.global_step}: training diverged")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report the metric; raise optuna.TrialPruned when the pruner says so or the metric is not finite."""
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        step = trainer.global_step
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"{self.monitor} is {value} at step {step}")
        prune = False
        if self.trial is not None and trainer.is_global_zero:  # the metric is synced: one rank decides for all
            self.trial.report(value, step)
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            raise optuna.TrialPruned(f"pruned at step {step}: {self.monitor}={value:.4f}")
