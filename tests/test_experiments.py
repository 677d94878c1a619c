"""The experiment generator and the W&B sweep export: files fit accepts, W&B's own schema, grid equivalence."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from lit_tuning.experiment import generator
from lit_tuning.experiment.config import Experiment, compose
from lit_tuning.experiment.generator import main
from lit_tuning.experiment.search_space import enumerate_trials, load_search_space
from lit_tuning.experiment.wandb_export import (
    SweepExportError,
    create_sweep,
    sweep_config,
    sweep_points,
    validate_sweep_config,
)
from lit_tuning.mappings import plain
from lit_tuning.train.cli import cli_main

with warnings.catch_warnings():  # sweeps' pydantic models warn about v1-style config keys on import
    warnings.simplefilter("ignore")
    from sweeps.config import schema_violations_from_proposed_config  # W&B's own sweep-config checker

SPACES = ROOT / "configs/hyperparameters/search_spaces"
BASE = str(ROOT / "configs/base.yaml")
STAMP = r"\d{8}_\d{6}"


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[list[Path], str]:
    """Run the generator in-process; return the files it printed and its last line."""
    assert main(list(args)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return [Path(line) for line in lines if line.endswith(".yaml")], lines[-1]


def printed_config(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """The config `python -m lit_tuning fit ARGS --print_config` prints."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def small_grid(tmp_path: Path) -> Path:
    """A 3 x 2 x 2 grid over the quick settings (one list-valued and one stepped parameter)."""
    document = yaml.safe_load((SPACES / "quick.yaml").read_text())
    document.update(strategy="grid", name="small grid", pruner="none")
    del document["n_trials"]
    document["parameters"] = {
        "model.lora_r": {"candidates": [2, 4, 8]},
        "model.target_modules": {"candidates": ["all-linear", ["q_proj", "v_proj"]]},
        "model.lora_dropout": {"low": 0.0, "high": 0.1, "step": 0.1},
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_single_writes_one_config_that_fit_accepts(tmp_path: Path, capsys):
    out = tmp_path / "out"
    files, summary = run_main(
        capsys, "--mode", "single", "--name", "my run", "--out-dir", str(out), "--set", "model.lora_r=8"
    )
    assert summary == f"1 experiment config written to {out}"
    assert len(files) == 1 and re.fullmatch(rf"my_run_{STAMP}\.yaml", files[0].name)
    printed = printed_config(capsys, "--config", BASE, "--config", str(files[0]))
    assert printed["model"]["lora_r"] == 8
    assert printed["model"]["learning_rate"] == 2e-4  # the seed grid's base value
    assert printed == printed_config(capsys, "--config", str(files[0]))  # self-contained, too


def test_grid_writes_the_19_oat_configs(tmp_path: Path, capsys):
    out = tmp_path / "out"
    files, summary = run_main(capsys, "--mode", "grid", "--out-dir", str(out))
    assert summary == f"19 experiment configs written to {out}"
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in files)
    assert all(re.fullmatch(rf"seed_grid_{STAMP}_\d\d\.yaml", path.name) for path in files)
    space = load_search_space(SPACES / "seed_grid.yaml")
    written = [compose(Experiment((BASE, str(path)))) for path in files]
    assert [{key: plain(config[key]) for key in space.parameters} for config in written] == enumerate_trials(space)


def test_full_grid_writes_every_point(tmp_path: Path, capsys):
    out = tmp_path / "out"
    files, _ = run_main(
        capsys, "--mode", "grid", "--full-grid", "--search-space", str(small_grid(tmp_path)), "--out-dir", str(out)
    )
    assert len(files) == 3 * 2 * 2
    assert files[0].name.startswith("small_grid_") and files[0].name.endswith("_01.yaml")
    printed = printed_config(capsys, "--config", BASE, "--config", str(files[-1]))
    assert printed["model"]["target_modules"] == ["q_proj", "v_proj"]
    assert printed["model"]["model_name_or_path"] == "embedded:micro"


def test_grid_mode_of_a_sampler_space_writes_its_seeded_draws(tmp_path: Path, capsys):
    args = ["--mode", "grid", "--search-space", str(SPACES / "quick.yaml")]
    first, _ = run_main(capsys, *args, "--out-dir", str(tmp_path / "a"))
    second, _ = run_main(capsys, *args, "--out-dir", str(tmp_path / "b"))
    assert len(first) == 4
    assert [compose(Experiment((str(p),))).to_dict() for p in first] == [
        compose(Experiment((str(p),))).to_dict() for p in second
    ]


def test_existing_files_are_not_overwritten(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(generator.time, "strftime", lambda _format: "20260101_000000")
    out = tmp_path / "out"
    files, _ = run_main(capsys, "--mode", "single", "--out-dir", str(out))
    before = files[0].read_text()
    assert main(["--mode", "single", "--out-dir", str(out), "--set", "model.lora_r=4"]) == 2
    assert f"refusing to overwrite {files[0]}; allowed: a new --name or --out-dir" in capsys.readouterr().err
    assert files[0].read_text() == before


def test_single_set_errors_name_the_key(tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["--mode", "single", "--out-dir", str(out), "--set", "model.lora_r=0"]) == 2
    err = capsys.readouterr().err
    assert "model.lora_r" in err and "v>0" in err and "'model.lora_r': 0" in err
    assert main(["--mode", "single", "--out-dir", str(out), "--set", "lora_r"]) == 2
    assert "--set 'lora_r' is not KEY=VALUE; allowed: e.g. --set model.lora_r=8" in capsys.readouterr().err
    assert not out.exists()


def test_an_unwritable_out_dir_is_reported(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--mode", "single", "--out-dir", str(blocker / "out")]) == 2
    assert f"error: cannot write to {blocker / 'out'}: " in capsys.readouterr().err
    assert blocker.read_text() == ""


def test_cli_exits_nonzero_with_the_message_and_writes_nothing(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy: tpe\nn_trials: 2\nparameters:\n  model.lora_r: {candidates: [0]}\n")
    out = tmp_path / "out"
    args = ["--mode", "grid", "--search-space", str(bad), "--out-dir", str(out)]
    command = [sys.executable, "-m", "lit_tuning.experiment", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert f"error: {bad}: parameters.model.lora_r.candidates[0] = 0 is refused by `fit`; allowed:" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_exports_a_sweep_wandb_accepts(path: Path):
    config, _ = sweep_config(load_search_space(path))
    assert schema_violations_from_proposed_config(config) == []
    validate_sweep_config(config)
    assert config["command"][:5] == ["${env}", "${interpreter}", "-m", "lit_tuning", "fit"]
    assert config["command"][-1] == "${args}"


def test_grid_sweep_enumerates_the_same_points(tmp_path: Path):
    space = load_search_space(small_grid(tmp_path))
    config, notes = sweep_config(space)
    assert config["method"] == "grid" and notes == []
    as_text = sorted(yaml.safe_dump(point) for point in sweep_points(config))
    assert as_text == sorted(yaml.safe_dump(point) for point in enumerate_trials(space))


def test_oat_exports_as_the_full_grid_with_a_note():
    space = load_search_space(SPACES / "seed_grid.yaml")
    config, notes = sweep_config(space)
    assert len(sweep_points(config)) == 4096
    assert notes == ["W&B has no one-at-a-time method: the oat design is exported as the full grid (4096 runs)"]


def test_sampler_sweep_distributions_and_hyperband(tmp_path: Path):
    config, notes = sweep_config(load_search_space(SPACES / "default.yaml"))
    assert config["method"] == "random" and config["run_cap"] == 12  # W&B has no quasi-random method
    assert config["metric"] == {"name": "val/letter_position_accuracy", "goal": "maximize"}
    assert config["parameters"]["model.learning_rate"] == {
        "distribution": "log_uniform_values",
        "min": 5e-4,
        "max": 2e-3,
    }
    assert config["parameters"]["model.lora_alpha"] == {"distribution": "log_uniform_values", "min": 32.0, "max": 128.0}
    assert config["parameters"]["model.lora_r"] == {"values": list(range(16, 65))}  # no integer log distribution
    assert config["parameters"]["trainer.max_steps"] == {"values": [1000, 2000]}
    assert "early_terminate" not in config  # the default study prunes nothing
    assert notes[0] == "W&B has no quasi-random sequence: the qmc study is exported as random search"
    assert len(notes) == 3 and all("exported as its int values" in note for note in notes[1:])
    document = yaml.safe_load((SPACES / "default.yaml").read_text())
    # successive halving and hyperband from step 100 (the first validation, every 100 batches, no accumulation):
    # W&B's hyperband from its first logged value, W&B iteration 1
    for pruner in (
        {"type": "successive_halving", "min_resource": 100, "reduction_factor": 3},
        {"type": "hyperband", "min_resource": 100, "max_resource": 1000, "reduction_factor": 3},
    ):
        (tmp_path / "pruned.yaml").write_text(yaml.safe_dump(document | {"pruner": pruner}))
        config, _ = sweep_config(load_search_space(tmp_path / "pruned.yaml"))
        assert config["early_terminate"] == {"type": "hyperband", "min_iter": 1, "eta": 3}, pruner["type"]
    document["pruner"] = {"type": "median", "n_warmup_steps": 200}
    (tmp_path / "median.yaml").write_text(yaml.safe_dump(document))
    config, notes = sweep_config(load_search_space(tmp_path / "median.yaml"))
    assert "early_terminate" not in config
    assert "W&B early termination is hyperband only: pruner median is not exported" in notes


def test_range_kinds_map_to_wandb_distributions(tmp_path: Path):
    document = yaml.safe_load((SPACES / "quick.yaml").read_text())
    document["parameters"] = {
        "data.batch_size": {"low": 4, "high": 64},
        "trainer.max_steps": {"low": 10, "high": 40, "step": 10},
        "model.lora_dropout": {"low": 0.0, "high": 0.3, "step": 0.1},
        "model.warmup_steps": {"low": 1, "high": 8, "log": True},
    }
    path = tmp_path / "kinds.yaml"
    path.write_text(yaml.safe_dump(document))
    config, notes = sweep_config(load_search_space(path))
    parameters = config["parameters"]
    assert parameters["data.batch_size"] == {"distribution": "int_uniform", "min": 4, "max": 64}
    assert parameters["trainer.max_steps"] == {"values": [10, 20, 30, 40]}  # W&B's q_uniform would send 20.0
    assert parameters["model.lora_dropout"] == {"distribution": "q_uniform", "min": 0.0, "max": 0.3, "q": 0.1}
    assert parameters["model.warmup_steps"] == {"values": list(range(1, 9))}
    assert len(notes) == 3  # median pruner not exported, two integer ranges listed
    assert "early_terminate" not in config
    validate_sweep_config(config)


def test_wandb_refusal_is_reported():
    with pytest.raises(SweepExportError, match="W&B refuses the sweep config"):
        validate_sweep_config({"method": "bayesian", "parameters": {"x": {"values": [1]}}})


def test_sweep_mode_writes_a_valid_file_and_says_how_to_create_it(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "out"
    assert main(["--mode", "sweep", "--search-space", str(SPACES / "default.yaml"), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    (path,) = out.iterdir()
    assert re.fullmatch(rf"default_sweep_{STAMP}\.yaml", path.name)
    assert f"wandb sweep --project lit_tuning {path}" in printed
    assert "1 W&B sweep config written" in printed
    assert schema_violations_from_proposed_config(yaml.safe_load(path.read_text())) == []


def test_create_sweep_never_hangs(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)

    real_run = subprocess.run

    def unreachable_server(command, **kwargs):  # a `wandb sweep` that never answers: only the timeout ends it
        assert "sweep" in command
        started = time.monotonic()
        try:
            return real_run(["sleep", "30"], **kwargs)
        finally:
            assert time.monotonic() - started < 10, "create_sweep waited for a server that never answers"

    monkeypatch.setattr(subprocess, "run", unreachable_server)
    message = create_sweep(tmp_path / "s.yaml", project="p", timeout_s=0.1)
    assert message.startswith("W&B did not answer within 0 s: sweep not created")
    assert f"wandb sweep --project p {tmp_path / 's.yaml'}" in message
