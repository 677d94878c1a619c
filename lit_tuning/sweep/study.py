"""One study's definition in the storage: created once from a search space, its budget, and what is left to run."""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from lit_tuning.experiment.search_space import ENUMERATED, SearchSpace, enumerate_trials
from lit_tuning.experiment.strategies import encode_params, in_space, make_pruner, make_sampler
from lit_tuning.sweep.storage import study_lock
from lit_tuning.sweep.trial_record import INTERRUPTED, retry_history

DEFINITION_ATTR = "space_definition"  # study attribute: the space's parameters and base when the study began
BASE_FILES = "base files"  # the definition key of the base config files, in the order they compose


class StudyMismatchError(ValueError):
    """The study exists with another search space or objective: resuming it with this one would mix designs."""


@dataclasses.dataclass(frozen=True)
class WorkerLimits:
    """When a worker stops taking trials: the study's trial budget is spent, a deadline passed, or too many failed."""

    n_trials: int
    deadline: float | None = None  # time.time() after which no new trial starts
    max_failures: int | None = None  # stop after this many failed trials (default: the budget)


def open_study(
    space: SearchSpace, name: str, storage: RDBStorage, n_trials: int, *, accept_changed_space: bool = False
) -> optuna.Study:
    """Create the study (queueing its design) or load it, refusing one made from a different space or budget kind.

    A space whose ranges, candidates or base were edited since the study began is refused too (its old trials
    were drawn from other ranges) unless ``accept_changed_space``: then the new definition is stored and used.
    """
    direction = space.direction
    sampler = optuna.samplers.RandomSampler(seed=space.seed) if space.strategy in ENUMERATED else make_sampler(space)
    with study_lock(storage, name):
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=direction,
            sampler=sampler,
            pruner=make_pruner(space),
            load_if_exists=True,
        )
        attrs = study.user_attrs
        identity = {"search_space_name": space.name, "metric": space.metric, "strategy": space.strategy}
        if not attrs:
            for key, value in {**identity, "search_space": str(space.path), "pruner": space.pruner}.items():
                study.set_user_attr(key, value)
            study.set_user_attr(DEFINITION_ATTR, space_definition(space))
            study.set_user_attr("budget", n_trials)
            for overrides, attrs_of_trial in initial_trials(space):
                study.enqueue_trial(encode_params(space, overrides), user_attrs=attrs_of_trial)
        else:
            differing = {key: (attrs.get(key), value) for key, value in identity.items() if attrs.get(key) != value}
            if differing:
                details = ", ".join(f"{key}: stored {old!r}, given {new!r}" for key, (old, new) in differing.items())
                raise StudyMismatchError(
                    f"study {name!r} already exists with another definition ({details}); "
                    "allowed: the same search space, or a new --study name"
                )
            check_definition(study, space, accept_changed_space)
            if n_trials != attrs.get("budget"):
                study.set_user_attr("budget", n_trials)  # a larger budget extends the study
    return study


def space_definition(space: SearchSpace) -> dict[str, str]:
    """What a study's trials depend on, as readable text: each parameter's range or candidates, the base files, and
    every value of the base they compose (so an edit inside a base file is a change too)."""
    definition = {f"parameter {key}": str(parameter) for key, parameter in sorted(space.parameters.items())}
    definition[BASE_FILES] = ", ".join(str(path) for path in space.base.files)
    base = space.resolved_base.namespace
    definition.update({f"base {key}": repr(value) for key, value in sorted(base.items()) if key != "config"})
    return definition


def definition_changes(stored: dict[str, str], given: dict[str, str]) -> list[str]:
    """One line per key whose definition differs: 'key: stored X, given Y' (absent on one side: 'none').

    A base value that only one side has is a config key that another version of lit_tuning lacks (a study stored
    before its base values were, or before a key was added), not an edit: it is left out.
    """
    keys = sorted(set(stored) | set(given))
    return [
        f"{key}: stored {stored.get(key, 'none')}, given {given.get(key, 'none')}"
        for key in keys
        if stored.get(key) != given.get(key) and (_is_declared(key) or (key in stored and key in given))
    ]


def _is_declared(key: str) -> bool:
    """Whether a definition key is one the space file declares itself (a parameter, the base files)."""
    return key.startswith("parameter ") or key == BASE_FILES


def check_definition(study: optuna.Study, space: SearchSpace, accept_changed_space: bool) -> None:
    """Refuse to continue a study under an edited space, unless asked; then record the new definition."""
    given = space_definition(space)
    stored = study.user_attrs.get(DEFINITION_ATTR)
    changes = definition_changes(stored, given) if stored is not None else []
    if changes and not accept_changed_space:
        raise StudyMismatchError(
            f"study {study.study_name!r} was started from another version of {space.path} ({'; '.join(changes)}); "
            "allowed: the unchanged space, a new --study name, or --continue-changed-space to go on under the new one"
        )
    if changes:
        print(f"study {study.study_name!r} continues under a changed space: {'; '.join(changes)}")
    if stored != given:  # studies made before the definition was stored get it now
        study.set_user_attr(DEFINITION_ATTR, given)


def initial_trials(space: SearchSpace) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Return the trials queued at creation: every grid/oat point, or the untuned base config when it is in the space.

    Queued trials are popped by exactly one worker each, so a parallel grid runs every point once
    (GridSampler alone lets two workers draw the same point).
    """
    if space.strategy in ENUMERATED:
        return [(overrides, {}) for overrides in enumerate_trials(space)]
    base = space.base_values
    if all(key in base and in_space(parameter, base[key]) for key, parameter in space.parameters.items()):
        return [(dict(base), {"is_base_config": True})]
    return []


def is_done(study: optuna.Study, budget: int) -> bool:
    """Whether every trial of the budget has finished (nothing runs or waits, and the count is reached)."""
    trials = study.get_trials(deepcopy=False)
    unfinished = any(trial.state in (TrialState.RUNNING, TrialState.WAITING) for trial in trials)
    finished = sum(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in trials)
    return not unfinished and finished >= budget


def retried_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the trials that some later trial retries (killed or interrupted attempts)."""
    return {number for trial in trials for number in retry_history(trial)}


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Queue a retry of each trial stopped by Ctrl-C that has none yet; return their numbers."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    requeued = []
    retry = RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("reason") == INTERRUPTED:
            if trial.number not in retried:
                retry(study, trial)
                requeued.append(trial.number)
    return requeued
