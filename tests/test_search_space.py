"""Search spaces: shipped files validate, exact trial counts, seeded sampling in bounds, and every bad input refused."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_tuning.experiment.generator import main
from lit_tuning.experiment.search_space import (
    Candidates,
    Range,
    SearchSpace,
    SearchSpaceError,
    enumerate_trials,
    load_search_space,
    trial_count,
)
from lit_tuning.experiment.strategies import (
    design,
    distributions,
    make_pruner,
    make_sampler,
    sample_trial,
    suggest,
    trial_config,
)

SPACES = ROOT / "configs/hyperparameters/search_spaces"
SHIPPED = sorted(path for path in SPACES.glob("*.yaml") if not path.stem.endswith("-next"))  # -next: written by reports
SEED_GRID = {
    "model.lora_r": [4, 8, 16, 32],
    "model.lora_alpha": [8, 16, 32, 64],
    "model.learning_rate": [1e-4, 2e-4, 5e-4, 1e-3],
    "data.batch_size": [4, 8, 16, 32],
    "trainer.accumulate_grad_batches": [1, 2, 4, 8],
    "trainer.max_steps": [500, 1000, 2000, 5000],
}
SEED_BASE = {
    "model.lora_r": 16,
    "model.lora_alpha": 32,
    "model.learning_rate": 2e-4,
    "data.batch_size": 8,
    "trainer.accumulate_grad_batches": 4,
    "trainer.max_steps": 1000,
}


def space_file(tmp_path: Path, document: dict[str, Any]) -> Path:
    """Write a search space document and return its path."""
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def valid_document() -> dict[str, Any]:
    """A small valid space over the base config, for tests to break one field at a time."""
    return {
        "name": "t",
        "strategy": "tpe",
        "n_trials": 3,
        "base": {"configs": [str(ROOT / "configs/base.yaml")]},
        "parameters": {
            "model.lora_r": {"candidates": [4, 8]},
            "model.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        },
    }


@pytest.fixture(scope="module")
def seed_grid() -> SearchSpace:
    return load_search_space(SPACES / "seed_grid.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_space_validates(path: Path):
    space = load_search_space(path)
    assert trial_count(space) >= 1
    assert space.parameters


def test_required_spaces_are_shipped():
    assert {"default.yaml", "seed_grid.yaml", "quick.yaml"} <= {path.name for path in SHIPPED}


def test_seed_grid_is_exactly_the_seed(seed_grid: SearchSpace):
    assert {key: list(parameter.values) for key, parameter in seed_grid.parameters.items()} == SEED_GRID
    assert seed_grid.base_values == SEED_BASE
    assert seed_grid.strategy == "oat"


def test_seed_grid_counts(seed_grid: SearchSpace):
    assert trial_count(seed_grid) == len(enumerate_trials(seed_grid)) == 19
    full = design(seed_grid, full_grid=True)
    assert len(full) == 4096 == 4**6
    assert len({yaml.safe_dump(point) for point in full}) == 4096


def test_oat_varies_one_parameter_at_a_time(seed_grid: SearchSpace):
    trials = enumerate_trials(seed_grid)
    assert trials[0] == SEED_BASE
    for trial in trials[1:]:
        changed = [key for key in trial if trial[key] != SEED_BASE[key]]
        assert len(changed) == 1
    varied = {(key, trial[key]) for trial in trials[1:] for key in trial if trial[key] != SEED_BASE[key]}
    assert varied == {(key, value) for key, values in SEED_GRID.items() for value in values if value != SEED_BASE[key]}


def test_oat_counts_every_candidate_when_the_base_is_not_one(tmp_path: Path):
    document = valid_document() | {"strategy": "oat"}
    del document["n_trials"]
    document["parameters"] = {
        "model.lora_r": {"candidates": [2, 4]},
        "data.batch_size": {"low": 8, "high": 32, "step": 8},
    }
    space = load_search_space(space_file(tmp_path, document))
    # base r=16 is not a candidate (2 runs); base batch 64 is outside 8..32 (4 runs); plus the base run
    assert trial_count(space) == 1 + 2 + 4


def test_grid_enumerates_stepped_ranges(tmp_path: Path):
    document = valid_document() | {"strategy": "grid"}
    del document["n_trials"]
    document["parameters"] = {
        "model.lora_dropout": {"low": 0.0, "high": 0.3, "step": 0.1},
        "model.lora_r": {"candidates": [4, 8]},
    }
    space = load_search_space(space_file(tmp_path, document))
    assert [trial["model.lora_dropout"] for trial in enumerate_trials(space)[::2]] == [0.0, 0.1, 0.2, 0.3]
    assert trial_count(space) == 8


def test_sampler_budget_and_reproducible_draws():
    space = load_search_space(SPACES / "quick.yaml")
    assert trial_count(space) == space.n_trials == 4
    assert sample_trial(space, 7) == sample_trial(space, 7)
    assert len({yaml.safe_dump(sample_trial(space, seed)) for seed in range(6)}) > 1
    assert design(space) == design(space)


def test_list_candidates_survive_optuna():
    space = load_search_space(SPACES / "quick.yaml")
    drawn = {yaml.safe_dump(sample_trial(space, seed)["model.target_modules"]) for seed in range(20)}
    assert {yaml.safe_dump("all-linear"), yaml.safe_dump(["q_proj", "v_proj"])} == drawn


def test_suggest_drives_a_real_optuna_study():
    space = load_search_space(SPACES / "default.yaml")
    study = optuna.create_study(direction=space.direction, sampler=make_sampler(space), pruner=make_pruner(space))
    for _ in range(3):
        trial = study.ask()
        overrides = suggest(trial, space)
        assert trial_config(space, overrides)["model.lora_r"] == overrides["model.lora_r"]
        study.tell(trial, overrides["model.learning_rate"])
    assert set(study.best_trial.distributions) == set(distributions(space)) == set(space.parameters)
    assert isinstance(make_sampler(space), optuna.samplers.QMCSampler)
    assert isinstance(make_pruner(space), optuna.pruners.NopPruner)


def qmc_learning_rates(seed: int, trials: int = 9) -> list[float]:
    """The learning rates a default-space qmc study draws, told in order (the first, before any result, is random)."""
    space = dataclasses.replace(load_search_space(SPACES / "default.yaml"), strategy="qmc", seed=seed)
    study = optuna.create_study(direction=space.direction, sampler=make_sampler(space))
    rates = []
    for _ in range(trials):
        trial = study.ask()
        rates.append(suggest(trial, space)["model.learning_rate"])
        study.tell(trial, 0.5)
    return rates


def test_qmc_strategy_fills_the_range_and_repeats_with_its_seed():
    rates = qmc_learning_rates(seed=0)
    assert rates == qmc_learning_rates(seed=0) and rates != qmc_learning_rates(seed=1)
    # after the first trial, 8 Sobol points fall one in each eighth of the log range (8 random draws: p = 0.002)
    low, high = math.log(5e-4), math.log(2e-3)
    eighths = sorted(int(8 * (math.log(rate) - low) / (high - low)) for rate in rates[1:])
    assert eighths == list(range(8))


def test_log_sampling_is_uniform_in_the_exponent():
    space = with_parameters(quick_space(), {"x": Range(1e-4, 1.0, "float", log=True)})
    draws = [sample_trial(space, seed)["x"] for seed in range(300)]
    below = sum(value < 1e-2 for value in draws) / len(draws)
    assert 0.4 < below < 0.6  # half the exponent range; a linear draw would put ~1% there


@functools.cache
def quick_space() -> SearchSpace:
    """quick.yaml, loaded once: property tests swap its parameters."""
    return load_search_space(SPACES / "quick.yaml")


def with_parameters(space: SearchSpace, parameters: dict[str, Candidates | Range]) -> SearchSpace:
    """The space with other parameters (sampling needs no validation against the CLI)."""
    return dataclasses.replace(space, parameters=parameters, strategy="random")


@st.composite
def ranges(draw: st.DrawFn) -> Range:
    kind = draw(st.sampled_from(["int", "float"]))
    log = draw(st.booleans())
    if kind == "int":
        low = draw(st.integers(1 if log else -1000, 1000))
        high = draw(st.integers(low + 1, low + 5000))
        step = 1 if log else draw(st.sampled_from([None, 1, 2, 5]))
        if step:
            high = low + max(1, (high - low) // step) * step
        return Range(low, high, "int", log, step)
    if log:
        low = draw(st.floats(1e-6, 1e3))
        return Range(low, low + draw(st.floats(1e-3, 1e3)), "float", True)
    step = draw(st.sampled_from([None, 0.5, 0.25]))
    low = draw(st.integers(-4000, 4000)) / 4  # quarters: a stepped range ends exactly on its grid, as Optuna requires
    return Range(low, low + draw(st.integers(1, 4000)) / 2, "float", False, step)


@settings(max_examples=60, deadline=None)
@given(parameter=ranges(), seed=st.integers(0, 2**31 - 1))
def test_sampling_stays_in_bounds_and_on_the_step(parameter: Range, seed: int):
    space = with_parameters(quick_space(), {"x": parameter})
    value = sample_trial(space, seed)["x"]
    assert parameter.contains(value)
    assert isinstance(value, int) == (parameter.kind == "int")
    if parameter.log:
        assert value > 0


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.integers(1, 512), min_size=1, max_size=6, unique=True), seed=st.integers(0, 10**6))
def test_candidates_are_drawn_from_the_list(values: list[int], seed: int):
    space = with_parameters(quick_space(), {"x": Candidates(tuple(values))})
    assert sample_trial(space, seed)["x"] in values


def test_trial_values_outside_the_space_are_refused(seed_grid: SearchSpace):
    assert trial_config(seed_grid, {"model.lora_alpha": 64})["model.lora_alpha"] == 64.0  # 64 is the candidate 64.0
    with pytest.raises(SearchSpaceError, match=r"trial sets model.lora_r = 12; allowed: one of \[4, 8, 16, 32\]"):
        trial_config(seed_grid, {"model.lora_r": 12})
    with pytest.raises(SearchSpaceError, match=r"trial sets model.lora_dropout = 0.1; allowed keys: model.lora_r"):
        trial_config(seed_grid, {"model.lora_dropout": 0.1})
    default = load_search_space(SPACES / "default.yaml")
    with pytest.raises(SearchSpaceError, match=r"learning_rate = 0.5; allowed: float in \[0.0005, 0.002\], log scale"):
        trial_config(default, {"model.learning_rate": 0.5})


def test_cmaes_refuses_candidates(tmp_path: Path):
    document = valid_document() | {"strategy": "cmaes"}
    with pytest.raises(SearchSpaceError, match="under strategy cmaes; allowed: ranges only"):
        load_search_space(space_file(tmp_path, document))


def param(key: str, spec: Any) -> Any:
    """A change that sets one parameter of the valid document."""
    return lambda document: document["parameters"].update({key: spec})


# Each bad input: (id, change to a valid document, fragments the message must contain besides the file path).
# The change is a function of the document, or raw YAML text for what a dict cannot express.
BAD_INPUTS: list[tuple[str, Any, list[str]]] = [
    ("unknown key", param("model.lora_rank", {"candidates": [4]}),
     ["parameters.model.lora_rank", "'model.lora_rank'", "allowed under model", "model.lora_r"]),
    ("unknown section", param("optimizer.lr", {"candidates": [0.1]}),
     ["parameters.optimizer.lr: 'optimizer.lr' is not a value", "allowed: ", "model, run_name"]),
    ("section, not a value", param("model", {"candidates": [4]}),
     ["parameters.model", "'model'", "allowed", "seed_everything"]),
    ("rank 0", param("model.lora_r", {"candidates": [4, 0]}),
     ["parameters.model.lora_r.candidates[1] = 0", "allowed", "v>0"]),
    ("dropout 1", param("model.lora_dropout", {"candidates": [0.1, 1.0]}),
     ["parameters.model.lora_dropout.candidates[1] = 1.0", "allowed", "v>=0 and v<1"]),
    ("negative lr bound", param("model.learning_rate", {"low": -1e-3, "high": 1e-2}),
     ["parameters.model.learning_rate (low) = -0.001", "allowed", "v>0"]),
    ("float range on an int key",
     param("data.batch_size", {"low": 4, "high": 64, "type": "float"}),
     ["parameters.data.batch_size (low) = 4.0", "allowed", "PositiveInt"]),
    ("low >= high", param("model.learning_rate", {"low": 1e-2, "high": 1e-3}),
     ["parameters.model.learning_rate: low = 0.01 is not below high = 0.001", "allowed: low < high"]),
    ("log with low 0", param("model.lora_dropout", {"low": 0.0, "high": 0.5, "log": True}),
     ["parameters.model.lora_dropout.low = 0.0 with log: true", "allowed: low > 0"]),
    ("step does not divide",
     param("model.lora_dropout", {"low": 0.0, "high": 0.5, "step": 0.3}),
     ["parameters.model.lora_dropout.step = 0.3 does not divide", "allowed"]),
    ("negative step", param("data.batch_size", {"low": 4, "high": 64, "step": -4}),
     ["parameters.data.batch_size.step = -4", "allowed: a number > 0"]),
    ("log and float step",
     param("model.learning_rate", {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}),
     ["parameters.model.learning_rate.step = 0.0001 with log: true", "allowed: no step on a log scale"]),
    ("empty candidates", param("model.lora_r", {"candidates": []}),
     ["parameters.model.lora_r.candidates = []", "allowed: a non-empty list"]),
    ("candidates not a list", param("model.lora_r", {"candidates": 8}),
     ["parameters.model.lora_r.candidates = 8", "allowed: a non-empty list"]),
    ("duplicate candidates", param("model.lora_r", {"candidates": [8, 4, 8]}),
     ["parameters.model.lora_r.candidates[2] = 8 repeats", "candidates[0]", "allowed: distinct values"]),
    ("duplicates after the parser", param("model.lora_alpha", {"candidates": [32, 32.0]}),
     ["parameters.model.lora_alpha.candidates[1] = 32.0 repeats", "allowed: distinct values"]),
    ("duplicate YAML key",
     "strategy: tpe\nn_trials: 2\nparameters:\n  model.lora_r: {candidates: [4]}\n  model.lora_r: {candidates: [8]}\n",
     ["duplicate key 'model.lora_r' at line 5", "allowed: each key once"]),
    ("unknown strategy", lambda d: d.update({"strategy": "bayesian"}),
     ["strategy = 'bayesian' is unknown", "allowed: grid, oat, random, tpe, gp, qmc, cmaes"]),
    ("unknown metric", lambda d: d.update({"objective": {"metric": "val/acc"}}),
     ["objective.metric = 'val/acc' is not a registered metric", "allowed", "val/letter_position_accuracy"]),
    ("test metric as objective", lambda d: d.update({"objective": {"metric": "test/loss"}}),
     ["objective.metric = 'test/loss' is never reported during fit", "allowed", "val/loss"]),
    ("model metric as objective", lambda d: d.update({"objective": {"metric": "model/trainable_params"}}),
     ["objective.metric = 'model/trainable_params' is never reported during fit", "allowed"]),
    ("grid too large to enumerate",
     lambda d: d.update({"strategy": "grid", "n_trials": None, "parameters": {
         key: {"low": 1, "high": 40, "step": 1}
         for key in ("model.lora_r", "model.warmup_steps", "data.batch_size", "data.split_seed")}}),
     ["strategy grid has 2,560,000 points (40 x 40 x 40 x 40)", "allowed: at most 100,000"]),
    ("descriptive metric", lambda d: d.update({"objective": {"metric": "baseline/chance"}}),
     ["objective.metric = 'baseline/chance' is descriptive only", "allowed", "val/loss"]),
    ("direction against the registry",
     lambda d: d.update({"objective": {"metric": "val/loss", "direction": "maximize"}}),
     ["objective.direction = 'maximize' contradicts", "allowed for val/loss: minimize"]),
    ("unknown pruner", lambda d: d.update({"pruner": "asha"}),
     ["pruner.type = 'asha' is unknown", "allowed: none, median, percentile, successive_halving, hyperband"]),
    ("unknown pruner option", lambda d: d.update({"pruner": {"type": "median", "warmup": 3}}),
     ["pruner.'warmup' is not a known field", "allowed", "n_warmup_steps"]),
    ("bad pruner option value", lambda d: d.update({"pruner": {"type": "percentile", "percentile": 150}}),
     ["pruner percentile with options {'percentile': 150} is refused by Optuna", "allowed options", "percentile"]),
    ("hyperband min_resource 0", lambda d: d.update({"pruner": {"type": "hyperband", "min_resource": 0}}),
     ["pruner hyperband with options {'min_resource': 0} is refused by Optuna", "min_resource >= 1"]),
    ("hyperband min_resource auto", lambda d: d.update({"pruner": {"type": "hyperband", "min_resource": "auto"}}),
     ["pruner hyperband with options {'min_resource': 'auto'} is refused", "(int >= 1)", "allowed options"]),
    ("sampler without budget", lambda d: d.pop("n_trials"),
     ["n_trials = None under strategy tpe", "allowed: an integer >= 1"]),
    ("oat with an unstepped range", lambda d: d.update({"strategy": "oat"}),
     ["parameters.model.learning_rate = a range without step under strategy oat", "allowed: candidates"]),
    ("grid budget not the grid size",
     lambda d: d.update({"strategy": "grid", "n_trials": 5, "parameters": {"model.lora_r": {"candidates": [4, 8]}}}),
     ["n_trials = 5 under strategy grid", "allowed: omit n_trials or set it to 2"]),
    ("missing base config", lambda d: d["base"].update({"configs": ["configs/nope.yaml"]}),
     ["base experiment is refused", "config file configs/nope.yaml does not exist", "allowed"]),
    ("bad base override", lambda d: d["base"].update({"overrides": {"model.lora_r": 0}}),
     ["base experiment is refused", 'Parser key "model.lora_r"', "v>0"]),
    ("misspelled top-level field", lambda d: d.update({"paramters": {}}),
     ["'paramters' is not a known field", "allowed", "parameters"]),
    ("candidates and a range", param("model.lora_r", {"candidates": [4], "low": 1}),
     ["parameters.model.lora_r mixes candidates with ['low']", "allowed: either candidates or a range"]),
    ("range without high", param("model.learning_rate", {"low": 1e-3}),
     ["parameters.model.learning_rate.high = None", "allowed: a number"]),
    ("unknown range type", param("model.lora_r", {"low": 1, "high": 8, "type": "double"}),
     ["parameters.model.lora_r.type = 'double'", "allowed: int, float"]),
    ("value outside a Literal", param("model.lr_schedule", {"candidates": ["cosine", "exp"]}),
     ["parameters.model.lr_schedule.candidates[1] = 'exp'", "allowed", "constant", "linear"]),
    ("int range with a fractional bound",
     param("model.lora_r", {"low": 1.5, "high": 8, "type": "int"}),
     ["parameters.model.lora_r.low = 1.5", "allowed: an integer"]),
    ("target_modules not a list", param("model.target_modules", {"candidates": [5]}),
     ["parameters.model.target_modules.candidates[0] = 5", "allowed", "all-linear"]),
    ("unknown base model", param("model.model_name_or_path", {"candidates": ["embedded:x"]}),
     ["parameters.model.model_name_or_path.candidates[0] = 'embedded:x'", "allowed", "embedded:tiny"]),
    ("seed not an int", lambda d: d.update({"seed": "abc"}), ["seed = 'abc'", "allowed: an integer"]),
    ("empty parameters", lambda d: d.update({"parameters": {}}), ["parameters = {}", "allowed: a non-empty mapping"]),
    ("not YAML", "parameters: [unclosed\n", ["not valid YAML"]),
    ("not a mapping", "- strategy: tpe\n", ["top level", "allowed: a mapping"]),
]  # fmt: skip


@pytest.mark.parametrize(("change", "fragments"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path, capsys, change: Any, fragments: list[str]):
    if isinstance(change, str):
        path = tmp_path / "space.yaml"
        path.write_text(change)
    else:
        document = copy.deepcopy(valid_document())
        change(document)
        path = space_file(tmp_path, document)
    out_dir = tmp_path / "out"
    for mode in ("grid", "sweep"):
        assert main(["--mode", mode, "--search-space", str(path), "--out-dir", str(out_dir)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        message = captured.err
        assert message.startswith(f"error: {path}: ")
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} missing from: {message}"
        assert not out_dir.exists()


def test_missing_search_space_file_is_refused(tmp_path: Path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["--mode", "grid", "--search-space", str(missing), "--out-dir", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert f"error: {missing}: cannot read it (No such file or directory); allowed: a readable YAML file" in message
    assert not (tmp_path / "out").exists()


def test_there_are_at_least_25_bad_inputs():
    assert len(BAD_INPUTS) >= 25
    assert len({case[0] for case in BAD_INPUTS}) == len(BAD_INPUTS)
