"""The search benchmark's replay on a tiny synthetic table: known best, known curves, compute counted exactly."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import ROOT
from sweep_helpers import alive, processes_naming, write_space

from lit_tuning.bench import claims, search, search_table
from lit_tuning.bench.curves import Curve, CurveTable, from_frame
from lit_tuning.bench.replay import Replay, Strategy
from lit_tuning.bench.search_table import CONFIG_KEYS, SEED_KEY, STAGES, export_table

STEPS = tuple(range(100, 1001, 100))  # validation every 100 steps, 1,000 in all
AXES = {"model.learning_rate": (0.001, 0.003, 0.01), "model.lora_r": (8, 32), "model.lora_alpha": (16, 64)}
BEST = (0.01, 32, 64)


def quality(config: tuple) -> float:
    """Additive effects, so the best config is BEST and one-at-a-time search can find it."""
    lr, rank, alpha = config
    return 0.3 + 0.1 * AXES["model.learning_rate"].index(lr) + 0.05 * (rank == 32) + 0.02 * (alpha == 64)


def rising(final: float, offset: float = 0.0) -> Curve:
    """A curve rising linearly to `final` at step 1,000; 64 tokens per step."""
    return Curve(STEPS, tuple(64 * s for s in STEPS), tuple(final * s / STEPS[-1] + offset for s in STEPS))


def synthetic(direction: str = "maximize") -> CurveTable:
    """Every config of AXES with one curve; BEST has two seeds, 0.01 apart (noise floor 0.00707)."""
    sign = 1 if direction == "maximize" else -1
    curves = {config: (rising(sign * quality(config)),) for config in itertools.product(*AXES.values())}
    curves[BEST] = (rising(sign * quality(BEST), 0.005), rising(sign * quality(BEST), -0.005))
    return CurveTable(AXES, curves, direction)


def test_best_noise_floor_and_target_of_the_table():
    table = synthetic()
    assert table.best() == BEST
    assert table.final(BEST) == pytest.approx(quality(BEST))
    assert table.noise_floor() == pytest.approx(0.01 / 2**0.5)
    assert table.target() == pytest.approx(quality(BEST) - 0.01 / 2**0.5)
    assert table.full_steps() == 12 * 1000


def test_minimised_table_ranks_by_its_direction():
    table = synthetic("minimize")
    assert table.best() == BEST  # the lowest final value
    assert table.reached(table.final(BEST)) and not table.reached(-quality((0.01, 8, 64)))


def test_full_grid_runs_every_config_once_and_counts_each_run_in_full():
    table = synthetic()
    events = Replay(table, Strategy("grid", "grid"), seed=3).run(budget_steps=10**9)
    assert [event.steps for event in events] == [1000 * n for n in range(1, 13)]
    assert [event.tokens for event in events] == [64_000 * n for n in range(1, 13)]
    assert events[-1].incumbent == BEST
    found = next(event for event in events if event.incumbent == BEST)
    assert found.steps == 1000 * (found.trial + 1)  # the best is found when its own run ends


def test_one_at_a_time_runs_its_design_then_the_combination():
    table = synthetic()
    events = Replay(table, Strategy("oat", "oat"), seed=0).run(budget_steps=10**9)
    # centre (0.003, 8, 16) + lr 0.001, 0.01 + r 32 + alpha 64 = 5 runs, then the combined best (0.01, 32, 64).
    assert len(events) == 6 and events[-1].steps == 6000
    assert events[-1].incumbent == BEST
    assert all(event.incumbent != BEST for event in events[:-1])


@pytest.mark.parametrize("from_checkpoint, continued_steps", [(True, 800), (False, 1000)])
def test_brief_then_top_k_continues_from_the_checkpoint(from_checkpoint, continued_steps):
    table = synthetic()
    strategy = Strategy("brief", "grid", brief_steps=200, top_k=3, from_checkpoint=from_checkpoint)
    events = Replay(table, strategy, seed=1).run(budget_steps=10**9)
    assert len(events) == 12 + 3
    assert events[11].steps == 12 * 200 and events[11].value is None  # brief values are not results
    assert events[-1].steps == 12 * 200 + 3 * continued_steps
    assert events[-1].tokens == 64 * events[-1].steps
    assert events[-1].incumbent == BEST


def test_pruned_trials_count_only_the_steps_they_ran():
    table = synthetic()
    replay = Replay(table, Strategy("sha", "grid", "sha"), seed=2)
    events = replay.run(budget_steps=10**9)
    trials = replay.study.trials
    ran = sum(max(trial.intermediate_values) for trial in trials)
    assert any(trial.state == optuna.trial.TrialState.PRUNED for trial in trials)
    assert events[-1].steps == ran < table.full_steps()


@pytest.mark.parametrize("sampler", ["random", "tpe", "gp", "qmc", "cmaes"])
def test_samplers_stop_at_the_budget_and_report_true_values(sampler):
    table = synthetic()
    events = Replay(table, Strategy(sampler, sampler, "median"), seed=0).run(budget_steps=6000)
    assert 6000 <= events[-1].steps < 7000
    for event in events:
        assert event.value is None or event.value == pytest.approx(table.final(event.incumbent))


def table_frame(table: CurveTable) -> pd.DataFrame:
    rows = []
    for config, runs in table.curves.items():
        for seed, curve in enumerate(runs, start=42):
            for step, tokens, value in zip(curve.steps, curve.tokens, curve.values, strict=True):
                values = dict(zip(AXES, config, strict=True))
                rows.append({"study": "bench_core", "trial": 0, "base_model": "tiny-a", **values, "data.batch_size": 64,
                             "trainer.max_steps": 1000, SEED_KEY: seed, "step": step, "tokens": tokens,
                             "value": value})  # fmt: skip
    return pd.DataFrame(rows)


def test_table_round_trips_through_its_csv_rows_and_refuses_a_partial_grid():
    frame = table_frame(synthetic())
    table = from_frame(frame, CONFIG_KEYS)
    assert table.axes == AXES and table.best() == BEST and len(table.curves[BEST]) == 2
    assert all(type(value) in (int, float) for values in table.axes.values() for value in values)  # YAML-ready
    partial = frame[~((frame["model.lora_r"] == 8) & (frame["model.lora_alpha"] == 16))]
    with pytest.raises(ValueError, match="not a full grid"):
        from_frame(partial, CONFIG_KEYS)


def test_a_seeded_replay_repeats_itself_with_every_pruner():
    for name in ("random+hyperband", "tpe+sha", "qmc+median"):
        strategy = next(s for s in search.strategies() if s.name == name)
        first, second = (Replay(synthetic(), strategy, seed=3).run(8000) for _ in range(2))
        assert len(first) > 3 and first == second, name


def test_replays_in_several_processes_give_the_rows_of_one():
    chosen = [s for s in search.strategies() if s.name in ("oat", "tpe+median", "cmaes+none", "random+hyperband")]
    one = search.replay_all(synthetic(), chosen, seeds=2, budget_steps=6000, workers=1)
    several = search.replay_all(synthetic(), chosen, seeds=2, budget_steps=6000, workers=2)
    assert len(one) > 8 * 3 and list(one.strategy.unique()) == [s.name for s in chosen]
    pd.testing.assert_frame_equal(one, several)


def test_benchmark_command_writes_the_figure_of_merit(tmp_path, capsys):
    path = tmp_path / "table.csv"
    table_frame(synthetic()).to_csv(path, index=False)
    names = ["oat", "grid+none", "random+sha", "brief200-top3"]
    assert (
        search.main([f"--table={path}", "--seeds=3", f"--out={tmp_path}", "--strategies", f"[{','.join(names)}]"]) == 0
    )
    summary = pd.read_csv(tmp_path / "replay_summary.csv").set_index("strategy")
    assert summary.loc["oat", "median_steps"] == 6000 and summary.loc["oat", "reached"] == 1.0
    assert summary.loc["grid+none", "reached"] == 1.0 and summary.loc["grid+none", "median_steps"] % 1000 == 0
    assert summary.loc["oat", "vs_oat"] == 1.0
    curves = pd.read_csv(tmp_path / "replay_curves.csv")
    assert set(curves.strategy) == set(names) and (tmp_path / "search_curves.png").stat().st_size > 10_000
    assert curves[curves.strategy == "grid+none"]["median"].iloc[-1] == pytest.approx(quality(BEST))


def test_unknown_strategy_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "table.csv"
    table_frame(synthetic()).to_csv(path, index=False)
    assert search.main([f"--table={path}", "--strategies", "[tpe+none,nope]", f"--out={tmp_path}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "'nope'" in error and "tpe+none" in error and "oat" in error
    assert not (tmp_path / "replay_summary.csv").exists()


def test_bad_where_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "table.csv"
    table_frame(synthetic()).to_csv(path, index=False)
    assert search.main([f"--table={path}", "--where", "model.nope=3", f"--out={tmp_path}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "model.nope=3" in error and "data.batch_size" in error
    assert not (tmp_path / "replay_summary.csv").exists()


def test_export_reads_completed_trials_of_the_recorded_stages(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="bench_core", storage=storage, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"model.learning_rate": 0.003, "model.lora_r": 8},
            distributions={
                "model.learning_rate": optuna.distributions.CategoricalDistribution([0.001, 0.003]),
                "model.lora_r": optuna.distributions.CategoricalDistribution([8, 32]),
            },
            value=0.5,
            intermediate_values={100: 0.2, 200: 0.5},
            user_attrs={"steps": 200, "tokens": 4000, "base_model": "tiny-0123456789ab"},
        )
    )
    study.add_trial(optuna.trial.create_trial(value=0.4, intermediate_values={100: 0.4}))  # before builds were recorded
    frame = export_table(STAGES[:1], storage=storage)
    assert list(frame.step) == [100, 200, 100] and list(frame.value) == [0.2, 0.5, 0.4]
    assert list(frame.tokens[:2]) == [2000, 4000]
    assert list(frame.base_model) == ["tiny-0123456789ab"] * 2 + ["unrecorded"]
    first = frame.iloc[0]
    assert first["model.lora_r"] == 8 and first["data.batch_size"] == 64 and first[SEED_KEY] == 42


def test_a_reading_that_mixes_base_model_builds_is_refused_in_one_line(tmp_path, capsys):
    frame = table_frame(synthetic())
    frame.loc[frame["model.learning_rate"] == 0.001, "base_model"] = "tiny-b"  # one axis value rerun on a new build
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    assert search.main([f"--table={path}", "--seeds=1", f"--out={tmp_path}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(path) in error and "tiny-a" in error and "tiny-b" in error
    assert not (tmp_path / "replay_summary.csv").exists()
    frame.assign(base_model="tiny-b").to_csv(path, index=False)  # one build, whichever: read
    assert search.main([f"--table={path}", "--seeds=1", f"--out={tmp_path}", "--strategies", "[grid+none]"]) == 0


def test_export_keeps_the_rows_of_stages_recorded_in_another_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="bench_core", storage=storage, direction="maximize")  # recorded here, no trial yet
    before = pd.DataFrame(
        [
            {"study": study, "trial": 0, "base_model": "tiny-a", **dict.fromkeys(CONFIG_KEYS, 1), SEED_KEY: 42,
             "step": 100, "tokens": 9, "value": value}
            for study, value in (("bench_core", 0.1), ("bench_seeds_base", 0.2), ("elsewhere", 0.3))
        ]
    )  # fmt: skip
    frame = export_table((*STAGES[:2], STAGES[1].resolve()), storage=storage, recorded=before)
    # bench_core comes from this storage (empty now), bench_seeds_base from the table before (once, though named
    # twice), and rows of a study that is no stage are not carried over
    assert list(frame.study) == ["bench_seeds_base"] and list(frame.value) == [0.2]


def test_recording_refuses_a_table_file_that_is_not_one(tmp_path, capsys):
    out = tmp_path / "table.csv"
    out.write_text("a,b\n1,2\n")
    code = search_table.main([f"--storage=sqlite:///{tmp_path / 'o.db'}", f"--root={tmp_path / 'runs'}",
                              f"--out={out}"])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(out) in error and "study" in error
    assert out.read_text() == "a,b\n1,2\n" and not (tmp_path / "runs").exists() and not (tmp_path / "o.db").exists()


def test_variance_shares_of_an_additive_table_have_no_interaction():
    shares = claims.variance_shares(synthetic()).set_index("term").share
    assert shares["model.learning_rate"] > shares["model.lora_r"] > shares["model.lora_alpha"] > 0
    main_effects = shares[list(AXES)].sum()
    assert main_effects == pytest.approx(1.0)
    assert shares.drop(list(AXES)).max() == pytest.approx(0.0, abs=1e-12)


def test_small_studies_name_interactions_the_full_table_does_not_have():
    claimed = claims.small_study_interactions(synthetic(), trials=8, draws=20)
    assert claimed.named_in.sum() <= 1.0 and (claimed["median"] >= 0).all()


def test_effective_learning_rate_explains_a_table_built_on_it():
    axes = {"model.learning_rate": (0.001, 0.004), "model.lora_r": (4, 16), "model.lora_alpha": (8, 32)}
    curves = {}
    for lr, rank, alpha in itertools.product(*axes.values()):
        effective = math.log(lr * alpha / rank)
        curves[(lr, rank, alpha)] = (rising(0.5 - 0.02 * (effective + 5) ** 2),)
    fits = claims.learning_rate_fits(CurveTable(axes, curves)).set_index("model").r2
    assert fits["log(lr x alpha / r)"] == pytest.approx(1.0)
    assert fits["log lr"] < 0.9


def test_narrowing_check_replays_studies_and_reads_the_proposed_space():
    kept = claims.narrowing_keeps_best(synthetic(), studies=1, trials=6).set_index("index").share_keeping_best
    assert set(kept.index) == {*AXES, "all", "importance_failed"}
    assert ((kept >= 0) & (kept <= 1)).all() and kept["all"] <= kept[list(AXES)].min()


def test_recording_a_bad_stage_says_why_in_one_line_and_writes_no_table(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(STAGES[0].read_text().replace("candidates: [16, 64]", "candidates: [16, zero]"))
    out = tmp_path / "table.csv"
    code = search_table.main([f"--stages={bad}", f"--storage=sqlite:///{tmp_path / 'o.db'}", f"--root={tmp_path}",
                              f"--out={out}"])  # fmt: skip
    assert code == 2
    assert "model.lora_r" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_the_benchmark_compares_every_sampler_with_every_pruner():
    chosen = {(s.sampler, s.pruner, s.brief_steps is not None) for s in search.strategies()}
    for sampler in ("grid", "random", "tpe", "gp", "qmc", "cmaes"):
        assert {(sampler, pruner, False) for pruner in ("none", "median", "sha", "hyperband")} <= chosen
    assert ("oat", "none", False) in chosen and ("grid", "none", True) in chosen


def batch_stage_frame(best_batch: dict[float, int]) -> pd.DataFrame:
    """The batch stages' slice (r 64, alpha 128, 2,000 steps): lr x batch, each lr best at its given batch size."""
    rows = []
    for lr, batch in itertools.product(AXES["model.learning_rate"], (32, 64, 128)):
        final = 0.5 + 0.1 * (batch == best_batch[lr])
        for step in STEPS:
            study = "bench_batch_64" if batch == 64 else "bench_batch"
            rows.append({"study": study, "trial": 0, "base_model": "tiny-a", "model.learning_rate": lr,
                         "model.lora_r": 64, "model.lora_alpha": 128, "data.batch_size": batch,
                         "trainer.max_steps": 2000, SEED_KEY: 42, "step": step, "tokens": batch * step,
                         "value": final * step / STEPS[-1]})  # fmt: skip
    return pd.DataFrame(rows)


def test_batch_stage_is_checked_on_its_slice_and_leaves_the_replay_grid_alone(tmp_path, capsys):
    best_batch = {0.001: 32, 0.003: 64, 0.01: 128}
    path = tmp_path / "table.csv"
    batch_stage_frame(best_batch).to_csv(path, index=False)
    effect = claims.batch_sections(path)["batch_size"].set_index("model.learning_rate")
    assert effect.best_batch.to_dict() == best_batch
    assert effect.loc[0.01, "batch_128"] == pytest.approx(0.6) and effect.loc[0.01, "batch_32"] == pytest.approx(0.5)
    # the replay reads the core stages only: the batch stages' runs neither add configs nor seeds to its grid
    pd.concat([table_frame(synthetic()), batch_stage_frame(best_batch)]).to_csv(path, index=False)
    assert search.main([f"--table={path}", "--seeds=1", f"--out={tmp_path}", "--strategies", "[grid+none]"]) == 0
    assert "12 configs over ['model.learning_rate', 'model.lora_r', 'model.lora_alpha']" in capsys.readouterr().out


def test_a_table_without_the_batch_stage_skips_its_check_and_says_so(tmp_path, capsys):
    path = tmp_path / "table.csv"
    table_frame(synthetic()).to_csv(path, index=False)
    assert claims.batch_sections(path) == {}
    assert "batch size: not checked" in capsys.readouterr().err


def test_a_table_without_its_study_column_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "table.csv"
    table_frame(synthetic()).drop(columns="study").to_csv(path, index=False)
    assert search.main([f"--table={path}", "--seeds=1", f"--out={tmp_path}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(path) in error and "'study'" in error
    assert not (tmp_path / "replay_summary.csv").exists()


@pytest.mark.slow  # a real 3-run stage of the micro model, killed once and re-run (~2-3 min on 2 cores)
def test_a_recording_killed_mid_stage_resumes_and_never_runs_a_finished_run_again(tmp_path: Path, micro_model_dir):
    grid = {"model.learning_rate": {"candidates": [1.0e-3, 3.0e-3, 1.0e-2]}}
    space = write_space(tmp_path, "bench_tiny", strategy="grid", n_trials=None, parameters=grid)
    storage, out, root = f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "table.csv", tmp_path / "root"
    command = [sys.executable, "-m", "lit_tuning.bench.search_table", f"--stages={space}", f"--storage={storage}",
               f"--root={root}", f"--out={out}"]  # fmt: skip
    recording = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = root / "runs" / "bench_tiny" / "t0001" / "config.yaml"
    deadline = time.monotonic() + 600
    while not second.is_file():  # the first run is finished, the second under way
        assert recording.poll() is None and time.monotonic() < deadline, "the second run never started"
        time.sleep(0.1)
    first_finished = optuna.load_study(study_name="bench_tiny", storage=storage).trials[0].datetime_complete
    os.kill(recording.pid, signal.SIGKILL)  # the recording alone: its sweep runs on, and the re-run joins it
    recording.wait()
    try:
        rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        for pid in processes_naming(str(space)):  # the killed recording's sweep ends with the study; never leave it
            deadline = time.monotonic() + 60
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    trials = optuna.load_study(study_name="bench_tiny", storage=storage).trials
    assert [trial.state.name for trial in trials] == ["COMPLETE"] * 3, "a run was lost or run twice"
    assert trials[0].datetime_complete == first_finished, "the run finished before the kill was run again"
    table = pd.read_csv(out)
    assert sorted(table["model.learning_rate"].unique()) == [1.0e-3, 3.0e-3, 1.0e-2]
    assert table.groupby("trial").step.apply(list).to_dict() == {n: [10, 20, 30, 40] for n in range(3)}
