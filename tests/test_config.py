"""Experiment configs: composition order, value sources, lossless YAML/JSON round trips, safe names (no training)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_tuning.experiment.config import (
    ConfigError,
    Experiment,
    apply_overrides,
    compose,
    format_value,
    parse_args,
    safe_name,
    save_config,
)
from lit_tuning.train.cli import SAFE_NAME, cli_main

BASE = str(ROOT / "configs/base.yaml")
QUICK = str(ROOT / "configs/hyperparameters/training/quick.yaml")
MICRO = "embedded:micro"
SMOL = str(ROOT / "configs/hyperparameters/models/smollm2-135m.yaml")


def printed_config(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """The config `python -m lit_tuning fit ARGS --print_config` prints."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_later_files_win_and_overrides_win_over_files():
    resolved = compose(Experiment((BASE, QUICK), {"trainer.max_steps": 40}))
    assert resolved["trainer.max_steps"] == 40  # base says 1000, quick.yaml 60, the override 40
    assert resolved["trainer.val_check_interval"] == 20  # quick.yaml over base's 100
    assert resolved["model.lora_r"] == 16  # only base sets it


def test_sources_name_the_file_override_default_or_link():
    resolved = compose(Experiment((BASE, QUICK), {"model.lora_r": 8}))
    assert resolved.sources["model.lora_r"] == "override"
    assert resolved.sources["trainer.val_check_interval"] == QUICK
    assert resolved.sources["model.lora_alpha"] == BASE
    assert resolved.sources["trainer.fast_dev_run"] == "default"
    assert resolved.sources["data.model_name_or_path"] == "linked from model.model_name_or_path"


def test_composition_matches_the_fit_cli(capsys):
    resolved = compose(Experiment((BASE, QUICK), {"model.learning_rate": 1e-4, "data.batch_size": 16}))
    args = ["--config", BASE, "--config", QUICK, "--model.learning_rate=1e-4", "--data.batch_size=16"]
    printed = printed_config(capsys, *args)
    assert resolved.to_dict() == printed


def test_overrides_over_a_composed_config_equal_a_fresh_composition():
    overrides = {"model.lora_r": 4, "data.batch_size": 8, "model.model_name_or_path": "embedded:micro"}
    fast = apply_overrides(compose(Experiment((BASE, QUICK), {"model.lora_r": 2})), overrides)
    fresh = compose(Experiment((BASE, QUICK), {"model.lora_r": 2, **overrides}))
    assert fast.to_dict() == fresh.to_dict() and fast.sources == fresh.sources and fast.experiment == fresh.experiment
    assert fast["data.model_name_or_path"] == "embedded:micro"  # the link follows the override


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_saved_config_round_trips_through_fit(tmp_path: Path, capsys, suffix: str):
    # micro: checking the target modules builds the model the config names
    overrides = {"model.lora_r": 4, "model.target_modules": ["q_proj", "v_proj"], "model.model_name_or_path": MICRO}
    experiment = Experiment((BASE, QUICK), overrides)
    saved = save_config(compose(experiment), tmp_path / f"saved{suffix}")
    original = printed_config(capsys, *experiment.cli_args())
    assert printed_config(capsys, "--config", str(saved)) == original
    assert compose(Experiment((str(saved),))).to_dict() == compose(experiment).to_dict()
    assert original["model"]["target_modules"] == ["q_proj", "v_proj"]


def test_round_trip_keeps_nulls_that_differ_from_defaults(tmp_path: Path, capsys):
    # base.yaml sets check_val_every_n_epoch: null (the Trainer's default is 1): a dump without nulls would lose it.
    saved = save_config(compose(Experiment((BASE,))), tmp_path / "saved.yaml")
    assert printed_config(capsys, "--config", str(saved))["trainer"]["check_val_every_n_epoch"] is None


def test_saved_yaml_records_its_composition(tmp_path: Path):
    saved = save_config(compose(Experiment((BASE, SMOL), {"data.batch_size": 4})), tmp_path / "a.yaml")
    header = [line for line in saved.read_text().splitlines() if line.startswith("#")]
    assert header[0] == f"# composed from: {BASE} + {SMOL}"
    assert "#   override: --data.batch_size=4" in header


def test_save_refuses_unknown_suffix_and_writes_nothing(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"suffix '.txt' is not supported; allowed: .yaml, .yml, .json"):
        save_config(compose(Experiment((BASE,))), tmp_path / "a.txt")
    assert os.listdir(tmp_path) == []


def test_bad_override_names_key_origin_and_rule():
    with pytest.raises(ConfigError) as error:
        compose(Experiment((BASE,), {"model.lora_dropout": 1.0}))
    message = str(error.value)
    assert 'Parser key "model.lora_dropout"' in message
    assert "v>=0 and v<1" in message
    assert f'"model.lora_dropout" is set in config file {BASE}, then on the command line' in message


def test_missing_config_file_is_named(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"config file {missing} does not exist"):
        compose(Experiment((BASE, str(missing))))


def test_unknown_embedded_model_is_refused_like_fit():
    with pytest.raises(ConfigError, match="unknown embedded base model 'embedded:nope'; allowed: embedded:tiny"):
        compose(Experiment((BASE,), {"model.model_name_or_path": "embedded:nope"}))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("seed grid", "seed_grid"),
        ("../../etc/passwd", "etc_passwd"),
        (".hidden", "hidden"),
        ("a/b\\c", "a_b_c"),
        ("lr=1e-4, r=8", "lr_1e-4_r_8"),
        ("ünïcode", "n_code"),
    ],
)
def test_safe_name(name: str, expected: str):
    assert safe_name(name) == expected
    assert SAFE_NAME.fullmatch(expected)


@pytest.mark.parametrize("name", ["", "...", "///", "  "])
def test_safe_name_refuses_names_without_usable_characters(name: str):
    with pytest.raises(ConfigError, match="has no usable characters"):
        safe_name(name)


@given(st.text(max_size=40))
def test_safe_name_never_escapes_a_folder(name: str):
    try:
        cleaned = safe_name(name)
    except ConfigError:
        return
    assert SAFE_NAME.fullmatch(cleaned) and "/" not in cleaned and not cleaned.startswith(".")


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_override_values_reach_the_parser_unchanged(value: float):
    base = compose(Experiment((BASE,)))
    assert parse_args([f"--model.learning_rate={format_value(value)}"], base.namespace)["model.learning_rate"] == value
