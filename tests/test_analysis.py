"""The analysis layer on real Optuna studies in SQLite with known values: tables, compute, pruning, Pareto, stats."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from lit_tuning.analysis import tables
from lit_tuning.analysis.importance import narrowed_space, param_importances, verdicts, write_space
from lit_tuning.analysis.significance import confirm_comparisons, confirm_summary, mean_ci, welch_test
from lit_tuning.experiment.search_space import Range, load_search_space
from lit_tuning.sweep import trial_record

ROOT = Path(__file__).resolve().parents[1]
FULL_STEPS = 1000
TOKENS_PER_STEP = 640
LR = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
RANK = optuna.distributions.CategoricalDistribution([4, 8, 16])
DROPOUT = optuna.distributions.FloatDistribution(0.0, 0.2)
SPACE_YAML = f"""\
name: synthetic
strategy: tpe
n_trials: 24
seed: 0
pruner: {{type: median, n_startup_trials: 2}}
base:
  configs: [{ROOT / "configs/base.yaml"}]
  overrides: {{trainer.max_steps: {FULL_STEPS}}}
parameters:
  model.learning_rate: {{low: 1.0e-4, high: 1.0e-2, log: true}}
  model.lora_r: {{candidates: [4, 8, 16]}}
  model.lora_dropout: {{low: 0.0, high: 0.2}}
"""


def accuracy(learning_rate: float, rank: int) -> float:
    """The synthetic study's truth: a peak at lr 2e-3, a small rank effect, no dropout effect."""
    return 0.6 - 0.15 * (math.log10(learning_rate) - math.log10(2e-3)) ** 2 + 0.002 * math.log2(rank)


def make_study(tmp_path: Path, name: str = "synthetic", *, n_complete: int = 24) -> tuple[optuna.Study, str]:
    """A real SQLite study: n_complete completed trials (trial 0 the base config), 3 pruned and 1 failed."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    space_path = tmp_path / "synthetic.yaml"
    space_path.write_text(SPACE_YAML)
    study.set_user_attr("search_space", str(space_path))
    study.set_user_attr("metric", "val/letter_position_accuracy")
    rng = np.random.default_rng(0)
    distributions = {"model.learning_rate": LR, "model.lora_r": RANK, "model.lora_dropout": DROPOUT}

    def add(params: dict, state: optuna.trial.TrialState, steps: int, value: float | None, **attrs) -> None:
        curve = {step: (value or 0.3) * step / steps for step in range(100, steps + 1, 100)}
        user_attrs = {"steps": steps, "tokens": steps * TOKENS_PER_STEP, "duration_s": steps * 0.2,
                      "trainable_params": 6144 * params["model.lora_r"], "total_params": 881_280, **attrs}  # fmt: skip
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=value,
                state=state,
                intermediate_values=curve if state != optuna.trial.TrialState.FAIL else {},
                user_attrs=user_attrs,
            )  # fmt: skip
        )

    base = {"model.learning_rate": 2e-3, "model.lora_r": 16, "model.lora_dropout": 0.0}
    add(base, optuna.trial.TrialState.COMPLETE, FULL_STEPS, accuracy(2e-3, 16) - 0.05, is_base_config=True)
    for _ in range(n_complete - 1):
        params = {
            "model.learning_rate": float(10 ** rng.uniform(-4, -2)),
            "model.lora_r": int(rng.choice([4, 8, 16])),
            "model.lora_dropout": float(rng.uniform(0, 0.2)),
        }
        add(
            params,
            optuna.trial.TrialState.COMPLETE,
            FULL_STEPS,
            accuracy(params["model.learning_rate"], params["model.lora_r"]),
        )
    for steps in (100, 200, 300):  # pruned early: 900 + 800 + 700 steps saved
        add({**base, "model.learning_rate": 1.1e-4}, optuna.trial.TrialState.PRUNED, steps, None, reason="pruned")
    add(base, optuna.trial.TrialState.FAIL, 50, None, reason="RuntimeError: boom")
    return study, storage


def test_trials_table_counts_best_and_base(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path)
    trials = trial_record.trials_frame(study)
    summary = tables.study_summary(trials)
    assert summary["n_trials"] == 28
    assert summary["counts"] == {"COMPLETE": 24, "PRUNED": 3, "FAIL": 1, "RUNNING": 0, "WAITING": 0}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    assert summary["best_number"] == best.number and summary["best_value"] == pytest.approx(best.value)
    assert summary["best_params"]["model.lora_r"] == best.params["model.lora_r"]
    assert summary["base_number"] == 0 and summary["base_value"] == pytest.approx(accuracy(2e-3, 16) - 0.05)
    assert summary["steps"] == 24 * FULL_STEPS + 600 + 50


def test_compute_and_best_so_far_follow_trial_order(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path, n_complete=5)
    frame = tables.with_compute(trial_record.trials_frame(study))
    assert frame.attrs["compute_unit"] == "tokens"
    assert frame["cumulative_compute"].iloc[-1] == (5 * FULL_STEPS + 600 + 50) * TOKENS_PER_STEP
    values = [t.value for t in sorted(study.trials, key=lambda t: t.number)]
    expected = pd.Series([v if v is not None else np.nan for v in values]).cummax().ffill()
    assert np.allclose(frame["best_so_far"], expected, equal_nan=True)
    assert frame["best_so_far"].is_monotonic_increasing


def test_pruning_savings_counts_steps_not_run(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path, n_complete=4)
    savings = tables.pruning_savings(trial_record.trials_frame(study), FULL_STEPS)
    assert savings["n_pruned"] == 3 and savings["pruned_steps_run"] == 600
    assert savings["steps_saved"] == 2400 and savings["tokens_saved"] == 2400 * TOKENS_PER_STEP
    assert savings["steps_spent"] == 4 * FULL_STEPS + 600 + 50
    assert savings["saved_fraction"] == pytest.approx(2400 / (4650 + 2400))
    assert tables.pruning_savings(trial_record.trials_frame(study))["full_steps"] == FULL_STEPS  # longest trial


def test_pareto_front_keeps_only_undominated_trials(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", direction="maximize")
    for cost, value in ((100, 0.5), (200, 0.6), (300, 0.55), (50, 0.3), (100, 0.45)):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"trainable_params": cost}))
    trials = trial_record.trials_frame(study)
    front = trials.loc[tables.pareto_mask(trials), "trainable_params"].tolist()
    assert sorted(front) == [50, 100, 200]


def test_curves_table_has_each_report(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path, n_complete=2)
    curves = trial_record.curves_frame(study)
    assert len(curves) == 2 * 10 + 1 + 2 + 3  # 10 reports per full trial, 1+2+3 for the pruned ones
    assert curves.groupby("number")["step"].max().to_dict()[2] == 100


def test_mlflow_tables_skip_trials_without_runs(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path, n_complete=2)
    trials = trial_record.trials_frame(study)
    assert tables.mlflow_curves(trials).empty and tables.mlflow_baselines(trials) == {}


def test_mean_ci_matches_student_t() -> None:
    interval = mean_ci([0.50, 0.52, 0.54])
    # mean 0.52, sd 0.02, t(0.975, 2) = 4.302653: half width 4.302653 * 0.02 / sqrt(3)
    assert interval.mean == pytest.approx(0.52) and interval.std == pytest.approx(0.02)
    assert interval.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([0.5]).low)
    with pytest.raises(ValueError):
        mean_ci([])


def test_welch_test_separates_clear_and_overlapping_differences() -> None:
    clear = welch_test([0.60, 0.61, 0.62], [0.40, 0.41, 0.43], names=("best", "base"))
    assert clear.significant and clear.p_value < 0.001 and "best is better" in clear.verdict
    close = welch_test([0.50, 0.55, 0.60], [0.49, 0.54, 0.61], names=("a", "b"))
    assert not close.significant and "indistinguishable" in close.verdict
    assert math.isnan(welch_test([0.5], [0.4]).p_value)


def test_confirm_comparisons_rank_best_runner_up_and_base() -> None:
    confirm = pd.DataFrame(
        {
            "config": ["base"] * 3 + ["rank01_t0003"] * 3 + ["rank02_t0007"] * 3,
            "seed": [0, 1, 2] * 3,
            "value": [0.40, 0.41, 0.42, 0.60, 0.62, 0.61, 0.59, 0.63, 0.60],
        }
    )
    summary = confirm_summary(confirm)
    assert summary["config"].tolist() == ["rank01_t0003", "rank02_t0007", "base"]
    assert summary.loc[0, "mean"] == pytest.approx(0.61)
    runner_up, base = confirm_comparisons(confirm)
    assert (runner_up.first, runner_up.second, runner_up.significant) == ("rank01_t0003", "rank02_t0007", False)
    assert (base.second, base.significant) == ("base", True)


def test_importance_finds_the_parameter_that_matters(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path)
    importances = param_importances(study, n_resamples=10)
    table = verdicts(importances).set_index("param")
    assert table.loc["model.learning_rate", "verdict"] == "matters"
    assert table.loc["model.learning_rate", "importance"] == table["importance"].max()
    assert table.loc["model.lora_dropout", "verdict"] != "matters"
    assert set(importances["evaluator"]) >= {"ped_anova"}
    assert (importances["low"] <= importances["high"]).all()


def test_narrowed_space_narrows_what_matters_and_loads(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path)
    trials = trial_record.trials_frame(study)
    space = load_search_space(study.user_attrs["search_space"])
    table = verdicts(param_importances(study, n_resamples=10))
    document, notes = narrowed_space(space, trials, table, study=study.study_name)
    written = write_space(document, tmp_path / "next.yaml")
    lr = written.parameters["model.learning_rate"]
    assert isinstance(lr, Range) and lr.log
    assert 1e-4 < lr.low < 2e-3 < lr.high < 1e-2  # narrower than the original, around the true optimum
    assert lr.high / lr.low < 100 / 2
    assert any("model.learning_rate" in note.title for note in notes)
    assert written.n_trials == 24 and written.strategy == "tpe"


def test_write_space_refuses_a_space_the_sweep_would_refuse(tmp_path: Path) -> None:
    document = {"strategy": "tpe", "n_trials": 2, "parameters": {"model.no_such_key": {"candidates": [1, 2]}}}
    with pytest.raises(ValueError, match="no_such_key"):
        write_space(document, tmp_path / "bad.yaml")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
