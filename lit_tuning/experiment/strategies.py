"""Search strategies on Optuna: distributions, suggestions from a trial, seeded sampling, samplers, pruners, trials."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import yaml

from lit_tuning.experiment.config import ConfigError, ResolvedConfig, apply_overrides, format_value
from lit_tuning.experiment.search_space import (
    ENUMERATED,
    PRIMITIVES,
    PRUNERS,
    Candidates,
    Range,
    SearchSpace,
    SearchSpaceError,
    enumerate_trials,
    same_value,
)


def _qmc_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's scrambled Sobol sampler: a space-filling, seeded sequence that ignores results (the search benchmark's
    most robust sampler across two base-model builds)."""
    with warnings.catch_warnings():  # Optuna marks QMCSampler experimental; chosen knowingly (benchmarks/search)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)


SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "random": optuna.samplers.RandomSampler,
    "tpe": optuna.samplers.TPESampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": _qmc_sampler,
    "cmaes": optuna.samplers.CmaEsSampler,
}
# Which parameter kinds each sampler accepts (grid/oat enumerate instead: candidates or stepped ranges only).
SAMPLER_KINDS = {
    "random": "candidates and ranges",
    "tpe": "candidates and ranges",
    "gp": "candidates and ranges",
    "qmc": "candidates and ranges (ranges follow the sequence; candidates are drawn at random)",
    "cmaes": "ranges only (no categorical distribution in CMA-ES)",
}


def distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    """Return the Optuna distribution of each parameter, keyed by its dotted CLI key."""
    result: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, parameter in space.parameters.items():
        if isinstance(parameter, Candidates):
            result[key] = optuna.distributions.CategoricalDistribution(_encode_choices(parameter))
        elif parameter.kind == "int":
            result[key] = optuna.distributions.IntDistribution(
                int(parameter.low), int(parameter.high), log=parameter.log, step=int(parameter.step or 1)
            )
        else:
            result[key] = optuna.distributions.FloatDistribution(
                parameter.low, parameter.high, log=parameter.log, step=parameter.step
            )
    return result


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Ask an Optuna trial for one value per parameter (suggest_int/float/categorical) and return the overrides."""
    overrides: dict[str, Any] = {}
    for key, parameter in space.parameters.items():
        if isinstance(parameter, Range) and parameter.kind == "int":
            overrides[key] = trial.suggest_int(
                key, int(parameter.low), int(parameter.high), step=int(parameter.step or 1), log=parameter.log
            )
        elif isinstance(parameter, Range):
            overrides[key] = trial.suggest_float(
                key, parameter.low, parameter.high, step=parameter.step, log=parameter.log
            )
        else:
            overrides[key] = decode_choice(parameter, trial.suggest_categorical(key, _encode_choices(parameter)))
    return overrides


def encode_params(space: SearchSpace, overrides: dict[str, Any]) -> dict[str, Any]:
    """Return overrides as Optuna stores them (list candidates as YAML text), e.g. to enqueue a known trial."""
    encoded = dict(overrides)
    for key, value in overrides.items():
        parameter = space.parameters.get(key)
        if isinstance(parameter, Candidates) and not _all_primitive(parameter):
            encoded[key] = format_value(value)
    return encoded


def decode_choice(parameter: Candidates, choice: Any) -> Any:
    """Turn a stored categorical choice back into the candidate value (lists are stored as their YAML text)."""
    return choice if _all_primitive(parameter) else yaml.safe_load(choice)


def _encode_choices(parameter: Candidates) -> tuple[Any, ...]:
    # Optuna stores only None/bool/int/float/str choices; a list candidate (target_modules) travels as YAML text.
    if _all_primitive(parameter):
        return parameter.values
    return tuple(format_value(value) for value in parameter.values)


def _all_primitive(parameter: Candidates) -> bool:
    return all(isinstance(value, PRIMITIVES) for value in parameter.values)


def sample_trial(space: SearchSpace, seed: int) -> dict[str, Any]:
    """Draw one trial's overrides from the space with a seeded random sampler (same seed, same trial)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return suggest(study.ask(), space)


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """Return the seeded Optuna sampler of a sampling strategy (grid/oat enqueue enumerate_trials instead)."""
    if space.strategy in ENUMERATED:
        raise SearchSpaceError(
            f"{space.path}: strategy = {space.strategy!r} has a fixed design; enqueue enumerate_trials(space) "
            f"instead; allowed samplers: {', '.join(SAMPLER_KINDS)}"
        )
    return SAMPLERS[space.strategy](seed=space.seed)


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    """Return the Optuna pruner the space asks for, with its options (NopPruner for none)."""
    return PRUNERS[space.pruner](**space.pruner_options)


def trial_config(space: SearchSpace, overrides: dict[str, Any], *, any_key: bool = False) -> ResolvedConfig:
    """Compose and validate the concrete config of one trial (base experiment + its overrides), as `fit` would."""
    for key, value in overrides.items():
        if any_key:
            continue
        if key not in space.parameters:
            raise SearchSpaceError(
                f"{space.path}: trial sets {key} = {value!r}; allowed keys: {', '.join(space.parameters)}"
            )
        if not in_space(space.parameters[key], value):
            raise SearchSpaceError(f"{space.path}: trial sets {key} = {value!r}; allowed: {space.parameters[key]}")
    try:
        return apply_overrides(space.resolved_base, overrides)
    except ConfigError as error:
        raise SearchSpaceError(f"{space.path}: trial {overrides!r} is refused by `fit`: {error}") from None


def in_space(parameter: Candidates | Range, value: Any) -> bool:
    """Whether a value is one of the candidates, or lies in the range and on its step."""
    if isinstance(parameter, Candidates):
        return any(same_value(value, candidate) for candidate in parameter.values)
    return isinstance(value, int | float) and not isinstance(value, bool) and parameter.contains(value)


def design(space: SearchSpace, *, full_grid: bool = False) -> list[dict[str, Any]]:
    """Return the trials a generator writes: the oat or grid design, the full grid on request, else seeded draws.

    enumerate_trials refuses a design past MAX_DESIGN_SIZE from its arithmetic size, before listing any point.
    """
    if full_grid:
        return enumerate_trials(_as_grid(space))
    if space.strategy in ENUMERATED:
        return enumerate_trials(space)
    assert space.n_trials is not None
    return [sample_trial(space, space.seed + number) for number in range(space.n_trials)]


def _as_grid(space: SearchSpace) -> SearchSpace:
    for key, parameter in space.parameters.items():
        if isinstance(parameter, Range) and parameter.step is None:
            raise SearchSpaceError(
                f"{space.path}: parameters.{key} is a range without step; allowed for a full grid: "
                "candidates or stepped ranges"
            )
    return dataclasses.replace(space, strategy="grid")
