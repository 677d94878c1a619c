"""The analysis layer on real Optuna studies in SQLite with known values, maximised and minimised: tables, stats."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from analysis_helpers import FULL_STEPS, TOKENS_PER_STEP, accuracy, make_study

from lit_tuning.analysis import mlflow_runs, tables
from lit_tuning.analysis.importance import jackknife_se, param_importances, subsamples, verdicts
from lit_tuning.analysis.narrowing import narrowed_space, write_space
from lit_tuning.analysis.significance import confirm_comparisons, confirm_summary, mean_ci, welch_test
from lit_tuning.experiment.search_space import Range, load_search_space
from lit_tuning.sweep import trial_record
from lit_tuning.sweep.progress import count, progress_line, status_table


def test_trials_table_counts_best_and_base(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path)
    trials = trial_record.trials_frame(study)
    summary = tables.study_summary(trials, direction="maximize")
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
    frame = tables.with_compute(trial_record.trials_frame(study), direction="maximize")
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


def test_pruning_savings_count_up_to_each_trials_own_tuned_length(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'l.db'}", direction="maximize")
    length = optuna.distributions.CategoricalDistribution([1000, 2000])
    for state, steps, max_steps in (("COMPLETE", 2000, 2000), ("PRUNED", 100, 1000), ("PRUNED", 300, 2000)):
        study.add_trial(optuna.trial.create_trial(
            state=getattr(optuna.trial.TrialState, state), value=0.5 if state == "COMPLETE" else None,
            params={"trainer.max_steps": max_steps}, distributions={"trainer.max_steps": length},
            intermediate_values={steps: 0.2}, user_attrs={"steps": steps, "tokens": 10 * steps},
        ))  # fmt: skip
    savings = tables.pruning_savings(trial_record.trials_frame(study))
    assert savings["steps_saved"] == (1000 - 100) + (2000 - 300)  # not (2000 - 100) + (2000 - 300)
    assert savings["tokens_saved"] == 10 * savings["steps_saved"]


def test_pareto_front_keeps_only_undominated_trials(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", direction="maximize")
    for cost, value in ((100, 0.5), (200, 0.6), (300, 0.55), (50, 0.3), (100, 0.45)):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"trainable_params": cost}))
    trials = trial_record.trials_frame(study)
    front = trials.loc[tables.pareto_mask(trials, direction="maximize"), "trainable_params"].tolist()
    assert sorted(front) == [50, 100, 200]


def test_curves_table_has_each_report(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path, n_complete=2)
    curves = trial_record.curves_frame(study)
    assert len(curves) == 2 * 10 + 1 + 2 + 3  # 10 reports per full trial, 1+2+3 for the pruned ones
    assert curves.groupby("number")["step"].max().to_dict()[2] == 100


def test_mlflow_tables_skip_trials_without_runs(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path, n_complete=2)
    trials = trial_record.trials_frame(study)
    assert mlflow_runs.mlflow_curves(trials).empty and mlflow_runs.mlflow_baselines(trials) == {}
    assert mlflow_runs.mlflow_links(trials, "http://127.0.0.1:5000") == {}


def test_mean_ci_matches_student_t() -> None:
    interval = mean_ci([0.50, 0.52, 0.54])
    # mean 0.52, sd 0.02, t(0.975, 2) = 4.302653: half width 4.302653 * 0.02 / sqrt(3)
    assert interval.mean == pytest.approx(0.52) and interval.std == pytest.approx(0.02)
    assert interval.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([0.5]).low)
    with pytest.raises(ValueError):
        mean_ci([])


def test_welch_test_separates_clear_and_overlapping_differences() -> None:
    clear = welch_test([0.60, 0.61, 0.62], [0.40, 0.41, 0.43], direction="maximize", names=("best", "base"))
    assert clear.significant and clear.p_value < 0.001 and "best is better" in clear.verdict
    close = welch_test([0.50, 0.55, 0.60], [0.49, 0.54, 0.61], direction="maximize", names=("a", "b"))
    assert not close.significant and "indistinguishable" in close.verdict
    assert math.isnan(welch_test([0.5], [0.4], direction="maximize").p_value)


def test_confirm_comparisons_rank_best_runner_up_and_base() -> None:
    confirm = pd.DataFrame(
        {
            "config": ["base"] * 3 + ["rank01_t0003"] * 3 + ["rank02_t0007"] * 3,
            "seed": [0, 1, 2] * 3,
            "value": [0.40, 0.41, 0.42, 0.60, 0.62, 0.61, 0.59, 0.63, 0.60],
        }
    )
    summary = confirm_summary(confirm, direction="maximize")
    assert summary["config"].tolist() == ["rank01_t0003", "rank02_t0007", "base"]
    assert summary.loc[0, "mean"] == pytest.approx(0.61)
    runner_up, base = confirm_comparisons(confirm, direction="maximize")
    assert (runner_up.first, runner_up.second, runner_up.significant) == ("rank01_t0003", "rank02_t0007", False)
    assert (base.second, base.significant) == ("base", True)


def test_importance_finds_the_parameter_that_matters(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path)
    importances = param_importances(study, n_resamples=10).table
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
    table = verdicts(param_importances(study, n_resamples=10).table)
    document, notes = narrowed_space(space, trials, table, study=study.study_name, direction="maximize")
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


# A minimised study (val/loss = 1 - accuracy of the same trials): every ranking must turn round.


def test_summary_compute_and_pareto_follow_a_minimised_direction(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path, n_complete=8, minimize=True)
    trials = trial_record.trials_frame(study)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    lowest, highest = min(complete, key=lambda t: t.value), max(complete, key=lambda t: t.value)
    summary = tables.study_summary(trials, direction="minimize")
    assert (summary["best_number"], summary["best_value"]) == (lowest.number, lowest.value) == (
        study.best_trial.number, study.best_trial.value)  # fmt: skip
    assert summary["best_number"] != highest.number
    frame = tables.with_compute(trials, direction="minimize")
    assert frame["best_so_far"].is_monotonic_decreasing and frame["best_so_far"].iloc[-1] == lowest.value
    front = trials.loc[tables.pareto_mask(trials, direction="minimize")]
    assert lowest.number in set(front["number"]) and highest.number not in set(front["number"])
    for _, row in front.iterrows():  # nothing cheaper has a lower loss
        cheaper = trials[(trials["state"] == "COMPLETE") & (trials["trainable_params"] < row["trainable_params"])]
        assert (cheaper["value"] > row["value"]).all()


def test_pareto_front_of_a_minimised_study(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", direction="minimize")
    for cost, value in ((100, 0.5), (200, 0.4), (300, 0.45), (50, 0.7), (100, 0.55)):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"trainable_params": cost}))
    trials = trial_record.trials_frame(study)
    assert sorted(trials.loc[tables.pareto_mask(trials, direction="minimize"), "trainable_params"]) == [50, 100, 200]


def test_confirm_summary_and_welch_rank_lower_first_when_minimised() -> None:
    confirm = pd.DataFrame(
        {"config": ["base"] * 3 + ["rank01_t0003"] * 3, "seed": [0, 1, 2] * 2,
         "value": [0.60, 0.61, 0.62, 0.40, 0.41, 0.39]}
    )  # fmt: skip
    summary = confirm_summary(confirm, direction="minimize")
    assert summary["config"].tolist() == ["rank01_t0003", "base"]
    (against_base,) = confirm_comparisons(confirm, direction="minimize")
    assert (against_base.first, against_base.second) == ("rank01_t0003", "base")
    assert against_base.significant and against_base.verdict.startswith("rank01_t0003 is better")
    assert welch_test([0.4, 0.41, 0.39], [0.6, 0.61, 0.62], direction="maximize", names=("a", "b")).verdict.startswith(
        "b is better"
    )


def test_narrowed_space_of_a_minimised_study_surrounds_the_lowest_loss(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path, minimize=True)
    trials = trial_record.trials_frame(study)
    space = load_search_space(study.user_attrs["search_space"])
    assert space.direction == "minimize"
    table = verdicts(param_importances(study, n_resamples=10).table)
    assert table.set_index("param").loc["model.learning_rate", "verdict"] == "matters"
    document, _ = narrowed_space(space, trials, table, study=study.study_name, direction="minimize")
    lr = write_space(document, tmp_path / "next.yaml").parameters["model.learning_rate"]
    assert lr.low < 2e-3 < lr.high and lr.high / lr.low < 50  # around the true optimum, where loss is lowest
    best_lr = study.best_trial.params["model.learning_rate"]
    assert lr.low <= best_lr <= lr.high


def test_status_table_and_progress_rank_a_minimised_study(tmp_path: Path) -> None:
    study, _ = make_study(tmp_path, n_complete=6, minimize=True)
    counts = count(study)
    assert (counts.best_number, counts.best_value) == (study.best_trial.number, study.best_trial.value)
    assert (counts.done, counts.finished, counts.failed) == (9, 10, 1)  # 6 complete + 3 pruned; + 1 failed
    assert f"best {study.best_trial.value:.4f} (t{study.best_trial.number:04d}" in progress_line(counts, 10, 0)
    lines = status_table(study).splitlines()
    assert "(minimize)" in lines[0] and "9/" in lines[0]
    first_row = lines[2].split()
    assert int(first_row[0]) == study.best_trial.number and first_row[1] == "COMPLETE"
    ranked = [float(line.split()[2]) for line in lines[2:] if line.split()[1] == "COMPLETE"]
    assert ranked == sorted(ranked)  # ascending loss: best first


def test_non_finite_values_are_left_out_of_rankings(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'n.db'}", direction="maximize")
    for value in (0.4, math.inf, 0.6, -math.inf):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"trainable_params": 10}))
    trials = trial_record.trials_frame(study)
    summary = tables.study_summary(trials, direction="maximize")
    assert (summary["best_number"], summary["nonfinite_numbers"]) == (2, [1, 3])
    assert tables.with_compute(trials, direction="maximize")["best_so_far"].tolist() == [0.4, 0.4, 0.6, 0.6]
    assert trials.loc[tables.pareto_mask(trials, direction="maximize"), "number"].tolist() == [2]
    assert count(study).best_number == 2


def test_importance_skips_subsamples_an_evaluator_cannot_compute(tmp_path: Path) -> None:
    """Three of four trials tie: the subsample without the fourth holds only tied values (fANOVA: zero variance)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 't.db'}", direction="maximize")
    distributions = {"model.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for learning_rate, value in ((1e-4, 0.5), (1e-3, 0.5), (3e-3, 0.5), (9e-3, 0.6)):
        params = {"model.learning_rate": learning_rate}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    result = param_importances(study, n_resamples=20)
    assert not result.table.empty and result.table["importance"].notna().all()
    fanova = result.table[result.table["evaluator"] == "fanova"]
    # 4 trials leave one out each in 4 subsamples (all of them, fewer than 20); the all-tied one was skipped
    assert len(fanova) == 1 and int(fanova["n_resamples"].iloc[0]) == 3


def test_jackknife_se_of_the_mean_over_all_subsamples_is_the_textbook_standard_error() -> None:
    """Delete-d jackknife over every subset is exact for the mean: s / sqrt(n), whatever d is."""
    x = np.array([0.61, 0.55, 0.72, 0.48, 0.66, 0.59, 0.70, 0.52])
    for left_out in (1, 2, 3):
        subsets = subsamples(len(x), left_out, count=1000, rng=np.random.default_rng(0))
        assert len(subsets) == math.comb(len(x), left_out) and len({tuple(s) for s in subsets}) == len(subsets)
        assert all(len(s) == len(x) - left_out for s in subsets)
        means = np.array([x[s].mean() for s in subsets])
        assert jackknife_se(means, len(x), left_out) == pytest.approx(x.std(ddof=1) / math.sqrt(len(x)))
    drawn = subsamples(12, 3, count=20, rng=np.random.default_rng(0))  # 220 subsets: 20 distinct ones drawn
    assert len({tuple(s) for s in drawn}) == 20 and all(len(s) == 9 for s in drawn)


@pytest.mark.parametrize("seed", [4, 6, 8, 9])
def test_importance_estimate_lies_inside_its_own_interval(seed: int) -> None:
    """12-trial studies like the default one, on which percentile-bootstrap intervals missed their own estimate."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(direction="maximize")
    distributions = {
        "lr": optuna.distributions.FloatDistribution(5e-4, 2e-3, log=True),
        "r": optuna.distributions.IntDistribution(16, 64, log=True),
        "alpha": optuna.distributions.FloatDistribution(32, 128, log=True),
        "steps": optuna.distributions.IntDistribution(1000, 2000, step=1000),
    }
    for _ in range(12):
        params = {
            "lr": float(np.exp(rng.uniform(np.log(5e-4), np.log(2e-3)))),
            "r": int(rng.integers(16, 65)),
            "alpha": float(rng.uniform(32, 128)),
            "steps": int(rng.choice([1000, 2000])),
        }
        value = 0.7 + 0.06 * (params["steps"] == 2000) - 0.3 * (np.log10(params["lr"]) + 3) ** 2 + rng.normal(0, 0.02)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    table = param_importances(study, n_resamples=20).table
    assert len(table) >= 4 and (table["n_resamples"] == 20).all()
    assert ((table["low"] <= table["importance"]) & (table["importance"] <= table["high"])).all()
    assert ((table["low"] >= 0) & (table["high"] <= 1)).all() and (table["high"] > table["low"]).any()
