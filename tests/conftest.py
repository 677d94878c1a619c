"""Shared fixtures: a session-wide cache with the micro base model, tiny configs, and the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Keep the 2 cores for one test at a time; subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point LIT_TUNING_CACHE at a fresh directory for the whole session: every base model is built here."""
    cache = tmp_path_factory.mktemp("lit_tuning_cache")
    previous = os.environ.get("LIT_TUNING_CACHE")
    os.environ["LIT_TUNING_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("LIT_TUNING_CACHE", None)
    else:
        os.environ["LIT_TUNING_CACHE"] = previous


@pytest.fixture(scope="session")
def micro_model_dir(model_cache: Path) -> Path:
    """The micro embedded base model, built once per session (seconds)."""
    from lit_tuning.train.base_model import resolve_model_path

    return Path(resolve_model_path("embedded:micro"))


def micro_args(runs_root: Path, *extra: str) -> list[str]:
    """CLI arguments for a seconds-long fit of the micro model writing under runs_root."""
    return [
        "--config", str(ROOT / "configs/base.yaml"),
        "--config", str(ROOT / "configs/hyperparameters/training/quick.yaml"),
        "--model.model_name_or_path", "embedded:micro",
        "--data.num_words", "300",
        "--trainer.max_steps", "30",
        "--trainer.val_check_interval", "10",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(runs_root),
        "--tracking.root", str(runs_root.parent / "tracking"),
        *extra,
    ]  # fmt: skip


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m lit_tuning ARGS` in a subprocess, as a user would, and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "lit_tuning", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
