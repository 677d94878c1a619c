"""Every YAML config in the repo parses against the CLI's signatures (configs never drift from code)."""

from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from lit_tuning.train.cli import cli_main

COMPOSABLE = sorted(
    p for p in (ROOT / "configs/hyperparameters").rglob("*.yaml") if p.parent.name in ("models", "training")
)


def printed_config(capsys: pytest.CaptureFixture[str], *files: Path) -> dict:
    args = ["fit", "--config", str(ROOT / "configs/base.yaml")]
    for path in files:
        args += ["--config", str(path)]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_base_config_is_the_offline_default(capsys):
    config = printed_config(capsys)
    assert config["model"]["model_name_or_path"] == "embedded:tiny"
    assert config["trainer"]["max_steps"] == 1000


def test_there_are_model_and_training_configs():
    names = {p.relative_to(ROOT / "configs/hyperparameters").as_posix() for p in COMPOSABLE}
    assert {"models/tiny.yaml", "training/quick.yaml", "training/default.yaml"} <= names
    assert len([n for n in names if n.startswith("models/")]) >= 3


@pytest.mark.parametrize("path", COMPOSABLE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_each_config_composes_over_base(path: Path, capsys):
    config = printed_config(capsys, path)
    own = yaml.safe_load(path.read_text())
    for section, values in own.items():
        for key, value in values.items():
            assert config[section][key] == value, f"{path}: {section}.{key} did not take effect"


def test_every_base_key_is_commented():
    lines = (ROOT / "configs/base.yaml").read_text().splitlines()
    keyed = [line for line in lines if ":" in line and not line.lstrip().startswith(("#", "-"))]
    uncommented = [line for line in keyed if "#" not in line and not line.rstrip().endswith(":")]
    assert not uncommented, uncommented
