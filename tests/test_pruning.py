"""Step-based pruning against a real Optuna study: reports land on global steps, a weak trial is pruned."""

from pathlib import Path

import lightning.pytorch as pl
import optuna
import pytest

from lit_tuning.sweep.pruning import StepPruningCallback
from lit_tuning.train.data import SpellingDataModule
from lit_tuning.train.metrics import PRIMARY_METRIC
from lit_tuning.train.module import LoRAModule


def fit_trial(trial: optuna.Trial, root: Path, learning_rate: float) -> float:
    pl.seed_everything(0)
    module = LoRAModule(model_name_or_path="embedded:micro", learning_rate=learning_rate, warmup_steps=0)
    data = SpellingDataModule(model_name_or_path="embedded:micro", num_words=300)
    trainer = pl.Trainer(
        max_steps=40, val_check_interval=10, check_val_every_n_epoch=None, limit_val_batches=1,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, callbacks=[StepPruningCallback(trial)],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return float(trainer.callback_metrics[PRIMARY_METRIC])


def test_reports_by_global_step_and_prunes_a_weak_trial(micro_model_dir: Path, tmp_path: Path):
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    study.optimize(lambda trial: fit_trial(trial, tmp_path, learning_rate=1e-2), n_trials=1)
    study.optimize(lambda trial: fit_trial(trial, tmp_path, learning_rate=1e-7), n_trials=1)
    good, weak = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    # one report per validation, at global steps 10, 20, 30, 40 — not four reports on epoch 0
    assert sorted(good.intermediate_values) == [10, 20, 30, 40]
    assert weak.state == optuna.trial.TrialState.PRUNED
    assert max(weak.intermediate_values) < 40  # stopped early: compute saved


def test_a_non_finite_metric_prunes_with_the_reason(micro_model_dir: Path, tmp_path: Path):
    class FakeTrainer:
        sanity_checking = False
        global_step = 30
        callback_metrics = {PRIMARY_METRIC: float("nan")}

    study = optuna.create_study(direction="maximize")
    callback = StepPruningCallback(study.ask())
    with pytest.raises(optuna.TrialPruned, match="is nan at step 30"):
        callback.on_validation_end(FakeTrainer(), None)
