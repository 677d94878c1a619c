"""W&B sweep export: a search space as a sweep config whose `wandb agent` runs `python -m lit_tuning fit`."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from lit_tuning.experiment.config import ConfigError, override_arg, parse_args
from lit_tuning.experiment.search_space import (
    ENUMERATED,
    Candidates,
    Range,
    SearchSpace,
    SearchSpaceError,
    enumerate_trials,
)
from lit_tuning.experiment.strategies import sample_trial
from lit_tuning.mappings import plain

METHODS = {
    "grid": "grid", "oat": "grid", "random": "random", "tpe": "bayes", "gp": "bayes", "qmc": "random", "cmaes": "bayes",
}  # fmt: skip
# Each trial logs through lit_tuning's own trackers with W&B online; under `wandb agent` it joins the sweep's run.
WANDB_ONLINE = "--tracking.wandb_mode=online"
CREATE_TIMEOUT_S = 60
MAX_LISTED_VALUES = 10_000


class SweepExportError(ValueError):
    """A sweep config W&B would refuse, or a sweep that could not be created; the message says why."""


def sweep_config(space: SearchSpace) -> tuple[dict[str, Any], list[str]]:
    """Return the W&B sweep config of a search space and notes on what W&B cannot express exactly."""
    notes: list[str] = []
    method = METHODS[space.strategy]
    if space.strategy == "oat":
        count = math.prod(len(parameter.points()) for parameter in space.parameters.values())
        notes.append(f"W&B has no one-at-a-time method: the oat design is exported as the full grid ({count} runs)")
    if space.strategy == "qmc":
        notes.append("W&B has no quasi-random sequence: the qmc study is exported as random search")
    parameters = {key: _parameter(key, parameter, method, notes) for key, parameter in space.parameters.items()}
    config: dict[str, Any] = {
        "name": space.name,
        "method": method,
        "metric": {"name": space.metric, "goal": space.direction},
        "parameters": parameters,
        "command": sweep_command(space),
    }
    if space.description:
        config["description"] = space.description
    if space.strategy not in ENUMERATED:
        config["run_cap"] = space.n_trials
    if space.pruner in ("hyperband", "successive_halving"):
        # W&B's hyperband stops runs at rungs min_iter * eta^k, as successive halving does in one bracket.
        config["early_terminate"] = _hyperband(space)
    elif space.pruner != "none":
        notes.append(f"W&B early termination is hyperband only: pruner {space.pruner} is not exported")
    return config, notes


def sweep_command(space: SearchSpace) -> list[str]:
    """Return the agent's command: the fit CLI on the base experiment, then W&B's `--key=value` trial arguments."""
    return ["${env}", "${interpreter}", "-m", "lit_tuning", "fit", *sweep_fit_args(space), "${args}"]


def sweep_fit_args(space: SearchSpace) -> list[str]:
    """Return the fixed `fit` arguments of every sweep run: base config files, base overrides, W&B online."""
    files = [arg for path in space.base.files for arg in ("--config", path)]
    fixed = [override_arg(key, value) for key, value in space.base.overrides.items()]
    return [*files, *fixed, WANDB_ONLINE]


def _parameter(key: str, parameter: Candidates | Range, method: str, notes: list[str]) -> dict[str, Any]:
    if isinstance(parameter, Candidates):
        return {"values": plain(list(parameter.values))}
    if method == "grid" or (parameter.kind == "int" and (parameter.log or (parameter.step or 1) != 1)):
        if method != "grid":
            # W&B's quantized distributions return floats (8.0), which an int key refuses; list the integers.
            notes.append(f"{key}: W&B has no integer log/stepped distribution: exported as its {parameter.kind} values")
        values = parameter.points() if parameter.step else list(range(int(parameter.low), int(parameter.high) + 1))
        if len(values) > MAX_LISTED_VALUES:
            raise SweepExportError(
                f"{key}: {len(values)} values to list for W&B; allowed: at most {MAX_LISTED_VALUES} "
                "(use a float range or a coarser step)"
            )
        return {"values": values}
    if parameter.kind == "int":
        return {"distribution": "int_uniform", "min": parameter.low, "max": parameter.high}
    if parameter.log:
        return {"distribution": "log_uniform_values", "min": parameter.low, "max": parameter.high}
    if parameter.step is not None:
        return {"distribution": "q_uniform", "min": parameter.low, "max": parameter.high, "q": parameter.step}
    return {"distribution": "uniform", "min": parameter.low, "max": parameter.high}


def _hyperband(space: SearchSpace) -> dict[str, Any]:
    # Optuna's resource is optimizer steps (the pruning callback reports by global step); W&B counts how many
    # times the metric was logged, i.e. validations, one every val_check_interval batches / accumulation.
    base = space.resolved_base
    batches_per_validation = base["trainer.val_check_interval"] or 1
    steps_per_validation = max(1, int(batches_per_validation) // int(base["trainer.accumulate_grad_batches"]))
    min_resource = space.pruner_options.get("min_resource", 1)
    return {
        "type": "hyperband",
        "min_iter": max(1, round(min_resource / steps_per_validation)),
        "eta": space.pruner_options.get("reduction_factor", 3),
    }


def sweep_points(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the runs of a grid sweep config, as W&B enumerates them (the product of each parameter's values)."""
    keys = list(config["parameters"])
    points: list[dict[str, Any]] = [{}]
    for key in keys:
        points = [{**point, key: value} for point in points for value in config["parameters"][key]["values"]]
    return points


def validate_sweep_config(config: dict[str, Any]) -> None:
    """Check a sweep config with W&B's own validator (the `sweeps` package's JSON schema and range checks)."""
    try:
        with warnings.catch_warnings():  # sweeps' pydantic models warn about v1-style config keys on import
            warnings.simplefilter("ignore")
            from sweeps.config import schema_violations_from_proposed_config
    except ImportError:
        raise SweepExportError(
            "cannot check the sweep config: W&B's `sweeps` package is not installed; allowed: "
            "pip install --no-deps sweeps==0.3.0 jsonref  (its numpy<2 pin is for search code lit_tuning does not use)"
        ) from None
    violations = schema_violations_from_proposed_config(config)
    if violations:
        raise SweepExportError("W&B refuses the sweep config: " + "; ".join(dict.fromkeys(violations)))


def check_command(space: SearchSpace) -> None:
    """Parse the agent's command with `fit` for one trial, so a sweep never starts runs the CLI would refuse."""
    trial = enumerate_trials(space)[0] if space.strategy in ENUMERATED else sample_trial(space, space.seed)
    try:
        parse_args(sweep_fit_args(space) + [override_arg(key, value) for key, value in trial.items()])
    except ConfigError as error:
        raise SearchSpaceError(f"{space.path}: the W&B command is refused by `fit`: {error}") from None


def create_sweep(path: Path, *, project: str, timeout_s: float = CREATE_TIMEOUT_S) -> str:
    """Create the sweep on the W&B server if an API key is configured; else return how to create it later."""
    later = f"wandb sweep --project {project} {path}"
    if not os.environ.get("WANDB_API_KEY"):
        return f"No WANDB_API_KEY: sweep not created. With a W&B server and key, create it with:\n  {later}"
    try:
        # A subprocess with a timeout: an unreachable server must not hang the generator.
        result = subprocess.run(
            [sys.executable, "-m", "wandb", "sweep", "--project", project, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return f"W&B did not answer within {timeout_s:.0f} s: sweep not created. Retry with:\n  {later}"
    if result.returncode != 0:
        return f"W&B refused to create the sweep ({result.stderr.strip()[-500:]}). Retry with:\n  {later}"
    return (result.stdout + result.stderr).strip()
