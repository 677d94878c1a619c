"""Callbacks that end a run the ways a real run can end: pruned by a tuner, or crashed."""

from typing import Literal

import lightning.pytorch as pl
from optuna import TrialPruned


class EndRunAtStep(pl.Callback):
    """Raise at a given global step: optuna's TrialPruned (as a pruning callback does) or a RuntimeError."""

    def __init__(self, step: int, how: Literal["pruned", "crash"]) -> None:
        self.step = step
        self.how = how

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            if self.how == "pruned":
                raise TrialPruned(f"pruned at step {trainer.global_step}")
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")
