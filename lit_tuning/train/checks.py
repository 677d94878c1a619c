"""Checks of a fit config that its types cannot express, run before anything is built or written."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector
from transformers import AutoConfig, AutoModelForCausalLM

from lit_tuning.tracking.settings import TrackingSettings
from lit_tuning.tracking.store import server_problem
from lit_tuning.train.base_model import embedded_config, is_embedded, looks_like_local_path, resolve_model_path
from lit_tuning.train.data import check_prompt, word_split
from lit_tuning.train.module import check_module_arguments
from lit_tuning.train.problems import ArgumentProblem

CHECKPOINT_ALIASES = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself


def check_fit_config(config: Namespace, *, this_machine: bool = True) -> None:
    """Raise ArgumentProblem for the first value of a parsed fit/validate/test config that cannot work.

    this_machine=False leaves out what depends on the hardware the run will have (accelerator, devices): a config
    composed here may be meant for a GPU machine.
    """
    check_finite(config)
    check_trainer(config.trainer)
    if this_machine:
        check_devices(config.trainer)
        check_tracking_server(config.get("tracking"))
    if config.get("ckpt_path") is not None:
        check_checkpoint(str(config.ckpt_path))
    model, data = config.model, config.data
    check_module_arguments(
        lora_alpha=model.lora_alpha,
        learning_rate=model.learning_rate,
        weight_decay=model.weight_decay,
        target_modules=model.target_modules,
        adapter_path=model.adapter_path,
    )
    if isinstance(model.target_modules, list) and model.adapter_path is None:
        check_target_modules(model.model_name_or_path, tuple(model.target_modules))
    check_prompt(data.prompt)
    word_split(data.num_words, data.min_word_length, data.max_word_length, data.val_fraction, data.test_fraction, 0)


def check_tracking_server(tracking: Namespace | None) -> None:
    """Refuse an MLflow server this machine cannot reach, before the run directory exists (a store is created)."""
    if tracking is None or not tracking.get("mlflow", True):
        return
    uri = TrackingSettings(**{k: v for k, v in tracking.items() if v is not None}).resolved_mlflow_uri()
    problem = server_problem(uri)
    if problem:
        key = "tracking.mlflow_tracking_uri" if tracking.get("mlflow_tracking_uri") else "$MLFLOW_TRACKING_URI"
        raise ArgumentProblem(key, f"{problem}; allowed: a running MLflow server, a sqlite:/// store, or null")


def check_finite(config: Namespace) -> None:
    """Refuse NaN and infinity anywhere: every float of a fit config is a quantity that must be finite."""
    for key, value in config.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ArgumentProblem(key, f"{value}; allowed: a finite number")


def check_trainer(trainer: Namespace) -> None:
    """Refuse trainer values that train forever, divide by zero, never validate or clip nothing."""
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    if max_steps == -1 and max_epochs == -1:
        raise ArgumentProblem(
            "trainer.max_steps",
            "-1 with trainer.max_epochs -1 trains forever; allowed: max_steps >= 1 or max_epochs >= 1",
        )
    if max_steps is not None and max_steps != -1 and max_steps < 1:
        raise ArgumentProblem("trainer.max_steps", f"{max_steps}; allowed: an integer >= 1, or -1 (set by max_epochs)")
    if max_epochs is not None and max_epochs != -1 and max_epochs < 1:
        raise ArgumentProblem("trainer.max_epochs", f"{max_epochs}; allowed: an integer >= 1, -1 or null")
    for key in ("accumulate_grad_batches", "log_every_n_steps", "check_val_every_n_epoch"):
        value = trainer.get(key)
        if value is not None and value < 1:
            raise ArgumentProblem(f"trainer.{key}", f"{value}; allowed: an integer >= 1")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and clip < 0:
        raise ArgumentProblem("trainer.gradient_clip_val", f"{clip}; allowed: a number >= 0 (0 or null: no clipping)")
    for key in ("limit_train_batches", "limit_val_batches"):
        value = trainer.get(key)
        if _is_number(value) and value <= 0:
            raise ArgumentProblem(
                f"trainer.{key}", f"{value}; allowed: > 0 (the objective needs training and validation)"
            )
    check_validation_interval(trainer)


def check_validation_interval(trainer: Namespace) -> None:
    """Refuse a validation interval of zero, above one epoch as a fraction, or longer than the whole training."""
    interval = trainer.get("val_check_interval")
    if not _is_number(interval):
        return  # null (every epoch) or a time interval
    if interval <= 0 or (isinstance(interval, float) and interval > 1):
        raise ArgumentProblem(
            "trainer.val_check_interval",
            f"{interval}; allowed: an integer >= 1 (training batches) or a fraction of an epoch in (0, 1]",
        )
    total_batches = trainer.max_steps * trainer.accumulate_grad_batches if trainer.max_steps > 0 else None
    if isinstance(interval, int) and total_batches is not None and interval > total_batches:
        raise ArgumentProblem(
            "trainer.val_check_interval",
            f"{interval} batches is longer than the training ({trainer.max_steps} steps x "
            f"{trainer.accumulate_grad_batches} batches): the objective would never be computed; "
            f"allowed: at most {total_batches}",
        )


def check_devices(trainer: Namespace) -> None:
    """Resolve accelerator, devices, strategy and precision as the Trainer will, refusing what this machine lacks."""
    settings = {key: trainer.get(key) for key in ("strategy", "num_nodes", "precision")}
    settings = {key: value for key, value in settings.items() if value is not None}
    accelerator = trainer.get("accelerator") or "auto"
    for key, devices in (("trainer.accelerator", "auto"), ("trainer.devices", trainer.get("devices") or "auto")):
        try:
            hashable = tuple(devices) if isinstance(devices, list) else devices  # the cache needs hashable keys
            _accelerator_connector(accelerator, hashable, tuple(sorted(settings.items())))
        except Exception as error:  # Lightning raises MisconfigurationException, TypeError, ValueError, ImportError
            value = accelerator if key == "trainer.accelerator" else devices
            raise ArgumentProblem(key, f"{value!r} cannot run here: {error}".replace("\n", " ")) from None


@functools.cache
def _accelerator_connector(accelerator: Any, devices: Any, settings: tuple[tuple[str, Any], ...]) -> None:
    # Lightning's own resolution (private, but the one place that knows every accelerator and device rule).
    devices = list(devices) if isinstance(devices, tuple) else devices
    _AcceleratorConnector(accelerator=accelerator, devices=devices, **dict(settings))


def check_checkpoint(ckpt_path: str) -> None:
    """Refuse a checkpoint path that is neither a file nor one of Lightning's aliases."""
    if ckpt_path not in CHECKPOINT_ALIASES and not Path(ckpt_path).expanduser().is_file():
        raise ArgumentProblem(
            "ckpt_path",
            f"{ckpt_path!r} is not a file; allowed: an existing .ckpt file, {', '.join(CHECKPOINT_ALIASES)} or null",
        )


def check_target_modules(model_name_or_path: str, targets: tuple[str, ...]) -> None:
    """Refuse target module names that match no layer of the model (PEFT matches a name or a dotted suffix)."""
    names = module_names(model_name_or_path)
    if names is None:
        return  # a hub model: its layers are known only after download, and PEFT reports them itself
    missing = [target for target in targets if not any(n == target or n.endswith("." + target) for n in names)]
    if missing:
        leaves = sorted({name.rpartition(".")[2] for name in names if name})
        raise ArgumentProblem(
            "model.target_modules",
            f"{missing} not in {model_name_or_path}; allowed: all-linear or names among {', '.join(leaves)}",
        )


@functools.cache
def module_names(model_name_or_path: str) -> tuple[str, ...] | None:
    """Return the model's module names, built on the meta device (no weights); None for a hub model."""
    if not (is_embedded(model_name_or_path) or looks_like_local_path(model_name_or_path)):
        return None
    if is_embedded(model_name_or_path):  # from the recipe: a check must not start a minutes-long build
        config = embedded_config(model_name_or_path)
        if config is None:
            return None  # an unknown name: the model reference check names the allowed ones
    else:
        config = AutoConfig.from_pretrained(resolve_model_path(model_name_or_path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return tuple(name for name, _ in model.named_modules())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
