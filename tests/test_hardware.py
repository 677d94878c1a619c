"""The hardware path: real-model shapes, the GPU check without a GPU, bf16-mixed on CPU, the bench smoke run."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lit_tuning.bench import gpu_check
from lit_tuning.bench.sweep import bench_space
from lit_tuning.experiment.search_space import load_search_space
from lit_tuning.train.shaped_models import SHAPES, shaped_config
from tests.conftest import ROOT, micro_args, run_cli

PUBLISHED_PARAMETERS = {"smollm2-135m": 134.5e6, "qwen2.5-0.5b": 494.0e6}  # the model cards' counts


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shapes_have_the_real_models_parameter_counts(shape: str):
    _, model_class, _ = SHAPES[shape]
    with torch.device("meta"):  # shapes only: no memory, no init
        model = model_class(shaped_config(shape, tokenizer_vocab=4096))
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == pytest.approx(PUBLISHED_PARAMETERS[shape], rel=0.01)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_flops_per_token_counts_the_frozen_body_four_times(shape: str):
    config = shaped_config(shape, tokenizer_vocab=4096)
    with torch.device("meta"):
        model = SHAPES[shape][1](config)
    body = sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    )
    assert gpu_check.flops_per_token(config, seq_len=0) == 4 * body
    attention = gpu_check.flops_per_token(config, seq_len=20) - 4 * body
    assert attention == 12 * config.num_hidden_layers * config.hidden_size * 20


def test_gpu_check_says_there_is_no_gpu_and_exits_0():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the check would run")
    result = subprocess.run(
        [sys.executable, "-m", "lit_tuning.bench.gpu_check"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no NVIDIA GPU visible" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.slow  # end to end, ~19 s on 2 cores: `make test-all` (CI) runs it
def test_bf16_mixed_fit_on_cpu(micro_model_dir: Path, tmp_path: Path):
    args = micro_args(tmp_path / "runs", "--run_name=bf16", "--trainer.precision=bf16-mixed")
    result = run_cli("fit", *args, "--trainer.accelerator=cpu", "--tracking.wandb_mode=disabled")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = pd.read_csv(tmp_path / "runs" / "bf16" / "metrics.csv")
    accuracy = metrics["val/letter_position_accuracy"].dropna()
    assert len(accuracy) == 3 and accuracy.between(0, 1).all()
    assert metrics["train/loss"].dropna().map(float).apply(lambda v: v == v).all()  # finite, not NaN


@pytest.mark.slow
def test_gpu_check_path_runs_on_cpu(micro_model_dir: Path, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "lit_tuning.bench.gpu_check", "--cpu-smoke", "--models", "smollm2-135m",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "gpu_check.csv")
    assert table.loc[0, "trials"] == 2 and table.loc[0, "tokens_per_s"] > 0 and table.loc[0, "trials_per_hour"] > 0


@pytest.mark.slow
def test_bench_hardware_quick_writes_every_figure(micro_model_dir: Path, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "lit_tuning.bench.hardware", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "hardware.csv")
    figures = " | ".join(table["figure"])
    for expected in ("fit / bare lean loop", "cold / warm", "warm worker RSS", "trials/hour"):
        assert expected in figures or expected in " ".join(table["detail"]), expected
    assert (table["ratio"] > 0).all() and (tmp_path / "hardware.png").is_file()
    warm_rows = pd.read_csv(tmp_path / "hardware_warm.csv")
    assert set(warm_rows["mode"]) == {"cold", "warm"}


def test_bench_space_trains_every_trial_the_same_number_of_steps(tmp_path: Path):
    # The default space tunes trainer.max_steps; the throughput benchmark must not.
    space = load_search_space(bench_space(tmp_path, trials=3, steps=7, model="embedded:micro"))
    assert "trainer.max_steps" not in space.parameters
    assert space.resolved_base["trainer.max_steps"] == 7 and space.pruner == "none"
