"""Warm workers: trials in one process share the base model, tokenizer and splits, and match cold fits exactly."""

from pathlib import Path

import pytest
import torch

from lit_tuning.train import warm
from lit_tuning.train.cli import cli_main
from tests.conftest import micro_args

TRIALS = {"a": ["--model.lora_r=4", "--model.learning_rate=0.01"], "b": ["--model.lora_r=8", "--seed_everything=7"]}
COMPARED = ("train/loss", "val/loss", "val/letter_position_accuracy")


def fit(root: Path, name: str) -> tuple[dict[str, float], set[str]]:
    """Run one micro fit through the CLI; return its final metrics and the files of its run directory."""
    args = micro_args(root, f"--run_name={name}", "--tracking.mlflow=false", "--tracking.wandb_mode=disabled")
    cli = cli_main(["fit", *args, *TRIALS[name]])
    metrics = {key: float(cli.trainer.callback_metrics[key]) for key in COMPARED}
    files = {path.relative_to(root / name).as_posix() for path in (root / name).rglob("*")}
    return metrics, files


@pytest.fixture
def warm_process():
    """Keep base models warm in this process, on one thread: CPU float sums depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    warm.enable()
    yield
    warm.enable(False)
    torch.set_num_threads(threads)


def test_two_warm_trials_match_cold_fits_and_load_the_base_once(micro_model_dir: Path, tmp_path: Path, warm_process):
    loads = warm.base_loads()
    warm_runs = {name: fit(tmp_path / "warm", name) for name in TRIALS}
    assert warm.base_loads() == loads + 1  # the second trial reused the kept base
    warm.enable(False)
    cold_runs = {name: fit(tmp_path / "cold", name) for name in TRIALS}
    assert warm.base_loads() == loads + 3
    for name in TRIALS:
        (warm_metrics, warm_files), (cold_metrics, cold_files) = warm_runs[name], cold_runs[name]
        assert warm_metrics == pytest.approx(cold_metrics, abs=1e-6), name
        assert warm_files == cold_files and "adapter/adapter_model.safetensors" in warm_files
    assert warm_runs["a"][0] != pytest.approx(warm_runs["b"][0])  # the trials really differ


def test_a_kept_base_loses_a_crashed_trials_adapters(micro_model_dir: Path, warm_process):
    from lit_tuning.train.module import LoRAModule

    first = LoRAModule(model_name_or_path="embedded:micro", lora_r=4)
    base, first_trainable = first.model.get_base_model(), first.trainable_parameters()[0]
    second = LoRAModule(model_name_or_path="embedded:micro", lora_r=8)  # the first never finished cleanly
    assert second.model.get_base_model() is base
    ranks = {module.r["default"] for module in base.modules() if hasattr(module, "r") and isinstance(module.r, dict)}
    assert ranks == {8}
    assert second.trainable_parameters()[0] == 2 * first_trainable  # r=8 adapters only, none of r=4 left
