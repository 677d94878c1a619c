"""Figure data on real studies with known structure, and that every figure is written as a PNG."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pandas as pd
import pytest
from test_analysis import FULL_STEPS, make_study

from lit_tuning.analysis import figures as viz
from lit_tuning.analysis import tables
from lit_tuning.sweep import trial_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def xor_study(tmp_path: Path) -> optuna.Study:
    """Value depends only on whether lora_r and batch_size are both high or both low; dropout is noise-free filler."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}", direction="maximize")
    distributions = {
        "model.lora_r": optuna.distributions.CategoricalDistribution([4, 32]),
        "data.batch_size": optuna.distributions.CategoricalDistribution([16, 64]),
        "model.lora_dropout": optuna.distributions.CategoricalDistribution([0.0, 0.1]),
    }
    for rank, batch, dropout in itertools.product([4, 32], [16, 64], [0.0, 0.1]):
        value = 0.5 + 0.2 * ((rank == 32) == (batch == 64))
        params = {"model.lora_r": rank, "data.batch_size": batch, "model.lora_dropout": dropout}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    return study


def test_interaction_picks_the_pair_that_interacts(tmp_path: Path) -> None:
    a, b, means, counts, share = viz.interaction_data(trial_record.trials_frame(xor_study(tmp_path)))
    assert {a, b} == {"model.lora_r", "data.batch_size"}
    assert share == pytest.approx(1.0)  # the whole variance is interaction: no main effects at all
    assert means.to_numpy().min() == pytest.approx(0.5) and means.to_numpy().max() == pytest.approx(0.7)
    assert int(counts.to_numpy().sum()) == 8


def test_last_reported_is_where_each_trial_stopped(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path, n_complete=2)
    stopped = viz.last_reported(trial_record.curves_frame(study)).set_index("number")["step"].to_dict()
    assert stopped == {0: FULL_STEPS, 1: FULL_STEPS, 2: 100, 3: 200, 4: 300}


def test_every_figure_is_written_as_png(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path, n_complete=6)
    trials, curves = trial_record.trials_frame(study), trial_record.curves_frame(study)
    baselines = {"baseline/chance": 1 / 26, "baseline/best_constant_per_position": 0.146}
    importances = pd.DataFrame(
        {"param": ["a", "b"], "evaluator": "ped_anova", "importance": [0.8, 0.2], "low": [0.6, 0.0], "high": [0.9, 0.4]}
    )
    confirm = pd.DataFrame(
        {"config": ["best"] * 3 + ["base"] * 3, "seed": [0, 1, 2] * 2, "value": [0.6, 0.62, 0.61, 0.5, 0.52, 0.49]}
    )
    from lit_tuning.analysis.significance import confirm_summary

    paths = [
        viz.plot_history(trials, curves, baselines, tmp_path / "f" / "history.png"),
        viz.plot_importance(importances, tmp_path / "f" / "importance.png"),
        viz.plot_importance(importances.iloc[0:0], tmp_path / "f" / "importance_empty.png"),
        viz.plot_params(trials, {"model.learning_rate"}, baselines, tmp_path / "f" / "params.png"),
        viz.plot_interaction(trials, tmp_path / "f" / "interaction.png"),
        viz.plot_curves(curves, baselines, tmp_path / "f" / "curves.png"),
        viz.plot_pareto(trials, baselines, tmp_path / "f" / "pareto.png"),
        viz.plot_pruning(trials, tables.pruning_savings(trials), tmp_path / "f" / "pruning.png"),
        viz.plot_confirm(confirm, confirm_summary(confirm), baselines, tmp_path / "f" / "confirm.png"),
        viz.plot_comparison([tables.with_compute(trials)], tmp_path / "f" / "comparison.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC, path
    assert not [p for p in (tmp_path / "f").iterdir() if p.name.startswith(".")]  # no temporary files left
