"""`python -m lit_tuning`: fit/validate/test end to end, --print_config, and bad input refused before any work."""

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, micro_args, run_cli

from lit_tuning.train.cli import cli_main
from lit_tuning.train.metrics import PRIMARY_METRIC


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path) -> Path:
    """A finished micro fit run through the real command line."""
    runs = tmp_path_factory.mktemp("runs")
    result = run_cli("fit", *micro_args(runs, "--run_name", "r1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "r1"


def test_fit_writes_config_metrics_split_checkpoints_and_adapter(fitted_run: Path):
    assert {p.name for p in fitted_run.iterdir()} >= {"config.yaml", "metrics.csv", "data_split.json", "adapter"}
    config = yaml.safe_load((fitted_run / "config.yaml").read_text())
    assert config["model"]["model_name_or_path"] == "embedded:micro"
    assert config["trainer"]["max_steps"] == 30
    metrics = pd.read_csv(fitted_run / "metrics.csv")
    accuracy = metrics[["step", PRIMARY_METRIC]].dropna()
    assert accuracy["step"].tolist() == [9, 19, 29]  # validation every 10 steps
    assert accuracy[PRIMARY_METRIC].between(0, 1).all()
    assert metrics["baseline/chance"].dropna().iloc[0] == pytest.approx(1 / 26)
    assert metrics["train/loss"].notna().sum() >= 5
    assert (fitted_run / "adapter" / "adapter_config.json").is_file()
    assert (fitted_run / "adapter" / "tokenizer.json").is_file()
    assert (fitted_run / "checkpoints" / "last.ckpt").is_file()


def test_checkpoints_hold_only_adapter_weights(fitted_run: Path):
    state = torch.load(fitted_run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in key for key in state)


def _evaluate(run: Path, subcommand: str, name: str, *extra: str) -> float:
    result = run_cli(subcommand, "--config", str(run / "config.yaml"), "--run_name", name, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    metric = f"{'val' if subcommand == 'validate' else 'test'}/letter_position_accuracy"
    assert metric in result.stdout
    value = pd.read_csv(run.parent / name / "metrics.csv")[metric].dropna().iloc[-1]
    assert 0 <= value <= 1
    return value


@pytest.mark.slow  # end to end, ~44 s on 2 cores: `make test-all` (CI) runs it
def test_validate_and_test_run_on_a_saved_run(fitted_run: Path):
    checkpoint = str(fitted_run / "checkpoints" / "last.ckpt")
    from_checkpoint = _evaluate(fitted_run, "validate", "val-ckpt", "--ckpt_path", checkpoint)
    from_adapter = _evaluate(fitted_run, "validate", "val-adapter", "--model.adapter_path", str(fitted_run / "adapter"))
    # the last checkpoint and the saved adapter are the same weights
    assert from_adapter == pytest.approx(from_checkpoint)
    fit_metrics = pd.read_csv(fitted_run / "metrics.csv")
    assert from_checkpoint == pytest.approx(fit_metrics[PRIMARY_METRIC].dropna().iloc[-1], abs=1e-6)
    _evaluate(fitted_run, "test", "test-ckpt", "--ckpt_path", checkpoint)


def test_print_config_shows_the_composed_config(capsys: pytest.CaptureFixture[str]):
    args = [
        "fit", "--config", str(ROOT / "configs/base.yaml"),
        "--config", str(ROOT / "configs/hyperparameters/training/quick.yaml"), "--model.lora_r", "8", "--print_config",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["lora_r"] == 8  # command line over files
    assert printed["trainer"]["max_steps"] == 60  # later file over earlier
    assert printed["model"]["lora_alpha"] == 32.0  # from base.yaml


BAD_INPUTS = [
    (["--model.learning_rate", "0"], 'Parser key "model.learning_rate"', "v>0"),
    (["--model.learning_rate=-1e-3"], 'Parser key "model.learning_rate"', "v>0"),
    (["--model.lora_r", "0"], 'Parser key "model.lora_r"', "v>0"),
    (["--model.lora_r", "abc"], 'Parser key "model.lora_r"', "PositiveInt"),
    (["--model.lora_dropout", "1"], 'Parser key "model.lora_dropout"', "v>=0 and v<1"),
    (["--model.lora_dropout=-0.1"], 'Parser key "model.lora_dropout"', "v>=0 and v<1"),
    (["--model.lr_schedule", "cosin"], 'Parser key "model.lr_schedule"', "'constant', 'linear', 'cosine'"),
    (["--model.bogus", "3"], "model.bogus", "allowed keys under model: adapter_path, learning_rate"),
    (["--model.model_name_or_path", "./missing-model"], "model.model_name_or_path", "does not exist"),
    (["--model.model_name_or_path", "embedded:huge"], "model.model_name_or_path", "allowed: embedded:tiny"),
    (["--run_name", "../escape"], 'Parser key "run_name"', "not a safe directory name"),
    # Values that pass their types but cannot work (lit_tuning/train/checks.py), refused before any tracker store.
    (["--model.learning_rate", "inf"], 'Parser key "model.learning_rate"', "allowed: a finite number"),
    (["--trainer.max_steps=-1", "--trainer.max_epochs=-1"], 'Parser key "trainer.max_steps"', "trains forever"),
    (["--trainer.accumulate_grad_batches", "0"], 'Parser key "trainer.accumulate_grad_batches"', "integer >= 1"),
    (["--trainer.val_check_interval", "31"], 'Parser key "trainer.val_check_interval"', "allowed: at most 30"),
    (["--trainer.gradient_clip_val=-1"], 'Parser key "trainer.gradient_clip_val"', "a number >= 0"),
    (["--trainer.accelerator", "tpu"], 'Parser key "trainer.accelerator"', "cannot run here"),
    (["--trainer.devices", "0"], 'Parser key "trainer.devices"', "cannot run here"),
    (["--model.target_modules", "[q_proj, nope]"], 'Parser key "model.target_modules"', "['nope'] not in"),
    (["--model.adapter_path", "missing-adapter"], 'Parser key "model.adapter_path"', "adapter_config.json"),
    (["--ckpt_path", "missing.ckpt"], 'Parser key "ckpt_path"', "is not a file"),
    (["--data.val_fraction", "0.5", "--data.test_fraction", "0.5"], 'Parser key "data.val_fraction"', "below 1"),
    (["--data.min_word_length", "7", "--data.max_word_length", "4"], 'Parser key "data.min_word_length"', "min <="),
    (["--data.num_words", "10000000"], 'Parser key "data.num_words"', "fewer words"),
    (["--data.prompt", "{word} {position} {oops}"], 'Parser key "data.prompt"', "cannot be filled"),
    (["--tracking.study", "it's"], 'Parser key "tracking.study"', "does not match regular expression"),
]


@pytest.mark.parametrize(("extra", "key", "allowed"), BAD_INPUTS)
def test_bad_input_is_refused_before_anything_is_written(extra, key, allowed, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *micro_args(tmp_path / "runs", *extra)])
    assert exit_info.value.code != 0
    message = capsys.readouterr().err
    assert key in message and allowed in message and "Traceback" not in message
    errors = [line for line in message.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0] and allowed in errors[0] and "usage:" not in message, message
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tracking").exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("model:\n  lora_r: 4\n  lora_r: 8\n", "duplicate key 'lora_r' at line 3; allowed: each key once"),
        ("- model\n- data\n", "top level is a list; allowed: a mapping"),
        ("model: [1\n", "expected ',' or ']'"),
    ],
    ids=["duplicate-key", "not-a-mapping", "invalid-yaml"],
)
def test_a_broken_config_file_is_named_on_one_line(text, problem, tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *micro_args(tmp_path / "runs", "--config", str(bad))])
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and f"config file {bad}: " in error_lines[0] and problem in error_lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tracking").exists()


def test_a_bad_value_in_a_config_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  lora_r: -3\n")
    with pytest.raises(SystemExit):
        cli_main(["fit", *micro_args(tmp_path / "runs", "--config", str(bad))])
    message = capsys.readouterr().err
    assert 'Parser key "model.lora_r"' in message and f"then in config file {bad}" in message
    assert not (tmp_path / "runs").exists()


def test_every_source_of_a_bad_key_is_named_in_order_also_for_relative_paths_in_other_folders(
    tmp_path, capsys, monkeypatch
):
    """jsonargparse reads a config from inside its folder: the sources must still be found from where the user is."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "first.yaml").write_text("model:\n  lora_r: 8\n")
    (tmp_path / "b" / "second.yaml").write_text("model:\n  lora_r: -3\n")
    monkeypatch.chdir(tmp_path)
    args = micro_args(tmp_path / "runs", "--model.lora_r", "4", "--config", "a/first.yaml", "--config", "b/second.yaml")
    with pytest.raises(SystemExit):
        cli_main(["fit", *args])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    expected = (
        '"model.lora_r" is set in config file ' + str(ROOT / "configs/base.yaml")
        + ", then on the command line, then in config file a/first.yaml, then in config file b/second.yaml"
    )  # fmt: skip
    assert expected in line
    assert not (tmp_path / "runs").exists()


def test_an_unknown_key_in_a_config_file_names_the_file_and_the_allowed_keys(tmp_path, capsys):
    bad = tmp_path / "typo.yaml"
    bad.write_text("model:\n  lora_rank: 8\n")
    with pytest.raises(SystemExit):
        cli_main(["fit", *micro_args(tmp_path / "runs", "--config", str(bad))])
    message = capsys.readouterr().err
    assert "model.lora_rank" in message and f"is set in config file {bad}" in message
    assert "allowed keys under model:" in message and "lora_r," in message
    assert not (tmp_path / "runs").exists()


def test_the_command_line_exits_non_zero_on_bad_input(tmp_path):
    result = run_cli("fit", *micro_args(tmp_path / "runs", "--model.lora_r", "0"))
    assert result.returncode == 2
    assert 'Parser key "model.lora_r"' in result.stderr
    assert not (tmp_path / "runs").exists()


def test_an_existing_run_name_is_refused(fitted_run: Path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", *micro_args(fitted_run.parent, "--run_name", fitted_run.name)])
    assert "already holds a run" in capsys.readouterr().err
