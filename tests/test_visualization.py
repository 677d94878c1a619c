"""Figure data on real studies with known structure (checked by value), and drawn axes holding those values."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import pytest
from analysis_helpers import FULL_STEPS, make_study, xor_study

from lit_tuning.analysis import figure_data as fd
from lit_tuning.analysis import figures as viz
from lit_tuning.analysis import tables
from lit_tuning.analysis.importance import Importances
from lit_tuning.analysis.interaction import interaction_data
from lit_tuning.analysis.significance import confirm_summary
from lit_tuning.sweep import trial_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASELINES = {"baseline/chance": 1 / 26, "baseline/best_constant_per_position": 0.146}
METRIC = "val/letter_position_accuracy"


@pytest.fixture(scope="module")
def study_tables(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A maximised and a minimised study of 6 completed, 3 pruned and 1 failed trial."""
    found = {}
    for direction in ("maximize", "minimize"):
        study, _ = make_study(tmp_path_factory.mktemp(direction), n_complete=6, minimize=direction == "minimize")
        found[direction] = (study, trial_record.trials_frame(study), trial_record.curves_frame(study))
    return found


def offsets(axis: plt.Axes) -> list[np.ndarray]:
    """The points of every scatter collection on an axis."""
    return [np.asarray(collection.get_offsets()) for collection in axis.collections if len(collection.get_offsets())]


def test_interaction_is_claimed_only_with_enough_trials_per_cell(tmp_path: Path) -> None:
    found = interaction_data(trial_record.trials_frame(xor_study(tmp_path, replicates=3)), direction="maximize")
    assert {found.a, found.b} == {"model.lora_r", "data.batch_size"}
    assert found.share == pytest.approx(1.0)  # the whole variance is interaction: no main effects at all
    assert found.means.to_numpy().min() == pytest.approx(0.5) and found.means.to_numpy().max() == pytest.approx(0.7)
    assert int(found.counts.to_numpy().sum()) == 24 and found.min_cell == 6
    assert found.supported and found.p_value < 0.05 and found.verdict.startswith("Interaction found")
    # The same structure from one trial per (rank, batch, dropout) point: cells of 2 trials carry no claim.
    (tmp_path / "thin").mkdir()
    thin = interaction_data(trial_record.trials_frame(xor_study(tmp_path / "thin", replicates=1)), direction="maximize")
    assert thin.share == pytest.approx(1.0) and thin.min_cell == 2 and not thin.supported
    assert "No interaction is claimed" in thin.verdict and "at least 3 trials in every cell" in thin.verdict


def test_interaction_from_noise_is_not_claimed(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'n.db'}", direction="maximize")
    distributions = {key: optuna.distributions.CategoricalDistribution([1, 2]) for key in ("model.a", "model.b")}
    rng = np.random.default_rng(3)
    for a, b, _ in itertools.product([1, 2], [1, 2], range(4)):
        params = {"model.a": a, "model.b": b}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=rng.normal()))
    found = interaction_data(trial_record.trials_frame(study), direction="maximize")
    assert found.min_cell == 4 and found.p_value >= 0.05 and not found.supported
    assert "arises by chance" in found.verdict and found.low <= found.share <= found.high


def test_last_reported_is_where_each_trial_stopped(study_tables: dict) -> None:
    _, _, curves = study_tables["maximize"]
    stopped = fd.last_reported(curves).set_index("number")["step"].to_dict()
    assert stopped == {**{n: FULL_STEPS for n in range(6)}, 6: 100, 7: 200, 8: 300}


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_history_data_and_drawing_follow_the_direction(study_tables: dict, direction: str) -> None:
    study, trials, curves = study_tables[direction]
    data = fd.history_data(trials, curves, direction=direction, metric=METRIC)
    complete = sorted((t.number, t.value) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    running = np.minimum.accumulate if direction == "minimize" else np.maximum.accumulate
    expected = running([value for _, value in complete])
    assert np.allclose(data.points["best_so_far"].iloc[: len(complete)], expected)
    assert data.points["best_so_far"].iloc[-1] == study.best_trial.value
    assert data.points["last_value"].notna().sum() == 3  # the pruned trials' last reports
    figure = viz.draw_history(data, BASELINES)
    axis = figure.axes[0]
    assert len(offsets(axis)[0]) == len(complete) and len(offsets(axis)[1]) == 3
    step_line = next(line for line in axis.get_lines() if line.get_label() == "best so far")
    assert np.allclose(step_line.get_ydata(), data.points["best_so_far"], equal_nan=True)
    plt.close(figure)


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_pareto_data_and_drawing(study_tables: dict, direction: str) -> None:
    study, trials, _ = study_tables[direction]
    data = fd.pareto_data(trials, direction=direction, metric=METRIC)
    assert len(data.points) == 6 and data.front["trainable_params"].is_monotonic_increasing
    assert study.best_trial.number in set(data.front["number"])  # the best value is always on the front
    better = np.less if direction == "minimize" else np.greater
    assert all(better(data.front["value"].diff().dropna(), 0))  # each dearer front point is strictly better
    figure = viz.draw_pareto(data, BASELINES)
    front_line = next(line for line in figure.axes[0].get_lines() if line.get_label() == "Pareto front")
    assert np.allclose(front_line.get_ydata(), data.front["value"]) and len(offsets(figure.axes[0])[0]) == 6
    plt.close(figure)


def test_pruning_data_and_bars(study_tables: dict) -> None:
    _, trials, _ = study_tables["maximize"]
    data = fd.pruning_data(trials, tables.pruning_savings(trials, FULL_STEPS))
    assert data.bars.loc[data.bars["state"] == "PRUNED", "saved"].tolist() == [900, 800, 700]
    assert data.bars.loc[data.bars["state"] != "PRUNED", "saved"].eq(0).all()
    figure = viz.draw_pruning(data)
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    assert heights == [*data.bars["steps"], *data.bars["saved"]]
    plt.close(figure)


def test_params_and_curves_data_and_drawing(study_tables: dict) -> None:
    _, trials, curves = study_tables["maximize"]
    params = fd.params_data(trials, {"model.learning_rate"}, direction="maximize", metric=METRIC)
    panels = {panel.key: panel for panel in params.panels}
    assert set(panels) == {"model.learning_rate", "model.lora_r", "model.lora_dropout"}
    assert panels["model.learning_rate"].scatter and panels["model.learning_rate"].log
    ranks = panels["model.lora_r"].points["x"]
    assert not panels["model.lora_r"].scatter and list(dict.fromkeys(ranks)) == [
        r for r in ("4", "8", "16") if r in set(ranks)
    ]
    assert all(len(panel.points) == 6 for panel in params.panels)
    figure = viz.draw_params(params, BASELINES)
    assert [sum(map(len, offsets(axis))) for axis in figure.axes[:3]] == [6, 6, 6]
    plt.close(figure)
    data = fd.curves_data(curves, pd.DataFrame(columns=curves.columns), metric=METRIC)
    assert data.stops["step"].tolist() == [100, 200, 300]
    figure = viz.draw_curves(data, BASELINES)
    trial_lines = [line for line in figure.axes[0].get_lines() if line.get_label().startswith("_child")]
    assert len(trial_lines) == 9  # one curve per trial that reported (the failed one did not)
    assert "where pruned" in legend_labels(figure.axes[0])
    plt.close(figure)
    unpruned = fd.curves_data(curves[curves.state != "PRUNED"], pd.DataFrame(columns=curves.columns), metric=METRIC)
    assert unpruned.stops.empty
    figure = viz.draw_curves(unpruned, BASELINES)
    assert "where pruned" not in legend_labels(figure.axes[0]) and "complete" in legend_labels(figure.axes[0])
    plt.close(figure)


def legend_labels(axis: plt.Axes) -> list[str]:
    return [text.get_text() for text in axis.get_legend().get_texts()]


def test_importance_confirm_and_comparison_drawings(study_tables: dict) -> None:
    table = pd.DataFrame(
        {"param": ["a", "b"], "evaluator": "ped_anova", "importance": [0.8, 0.2], "low": [0.6, 0.0], "high": [0.9, 0.4]}
    )
    data = fd.importance_data(Importances(table))
    assert data.order == ["a", "b"] and data.reason is None
    figure = viz.draw_importance(data)
    assert [patch.get_width() for patch in figure.axes[0].patches] == [0.8, 0.2]
    plt.close(figure)
    empty = fd.importance_data(Importances(table.iloc[0:0], ("importance needs at least 4 trials",)))
    figure = viz.draw_importance(empty)
    assert "needs at least 4" in figure.axes[0].texts[0].get_text()  # says why, instead of an empty plot
    plt.close(figure)
    confirm = pd.DataFrame({"config": ["best"] * 3 + ["base"] * 3, "seed": [0, 1, 2] * 2,
                            "value": [0.6, 0.62, 0.61, 0.5, 0.52, 0.49]})  # fmt: skip
    data = fd.confirm_data(confirm, confirm_summary(confirm, direction="maximize"), metric=METRIC)
    figure = viz.draw_confirm(data, BASELINES)
    assert sum(map(len, offsets(figure.axes[0]))) >= 6  # every seed is drawn
    plt.close(figure)
    frames = [tables.with_compute(study_tables[d][1], direction=d) for d in ("maximize", "minimize")]
    data = fd.comparison_data(frames, metric=METRIC)
    assert [len(x) for _, x, _ in data.lines] == [10, 10] and np.nanmin(data.lines[1][2]) == data.lines[1][2][-1]
    figure = viz.draw_comparison(data)
    assert len(figure.axes[0].get_lines()) == 2
    plt.close(figure)


def test_figures_are_saved_as_png_without_temporary_files(study_tables: dict, tmp_path: Path) -> None:
    _, trials, curves = study_tables["maximize"]
    figure = viz.draw_history(fd.history_data(trials, curves, direction="maximize", metric=METRIC), BASELINES)
    path = viz.save_figure(figure, tmp_path / "f" / "history.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["history.png"]  # no temporary file left
