"""A study's results on disk: the trials and curves tables, and best.yaml plus the top-k as replayable configs."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lit_tuning.experiment.config import composition_header, dump_config
from lit_tuning.experiment.search_space import Candidates, SearchSpace
from lit_tuning.experiment.strategies import decode_choice, trial_config
from lit_tuning.files import atomic_write
from lit_tuning.paths import CONFIGS_ROOT, DATA_ROOT, configs_dir, data_dir
from lit_tuning.sweep.trial_record import ascending, curves_frame, trials_frame

DEFAULT_TOP_K = 3


class ResultsFolderError(ValueError):
    """A results folder the sweep cannot write to (read-only, not a folder, no permission)."""


def check_writable(root: Path) -> None:
    """Refuse a results root that cannot take a file, before the study or any tracker store is touched."""
    existing = next(folder for folder in (root, *root.absolute().parents) if folder.exists())
    try:  # probe the folder itself, or the nearest one that exists: a refused command must leave nothing behind
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ResultsFolderError(
            f"--results-root {str(root)!r} is not writable ({error.strerror}); allowed: a folder this user can write"
        ) from None


def decoded_params(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """Turn a trial's stored params back into `fit` overrides (list candidates are stored as YAML text)."""
    return {
        key: decode_choice(space.parameters[key], value) if isinstance(space.parameters.get(key), Candidates) else value
        for key, value in params.items()
    }


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials with a finite value, best first in the study's direction (the report's ranking too)."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finite = [trial for trial in completed if math.isfinite(trial.value)]  # an inf loss is no result to replay
    lower_first = ascending(study.direction)
    return sorted(finite, key=lambda trial: (trial.value if lower_first else -trial.value, trial.number))


def write_results(
    study: optuna.Study,
    space: SearchSpace,
    *,
    top_k: int = DEFAULT_TOP_K,
    data_root: Path = DATA_ROOT,
    configs_root: Path = CONFIGS_ROOT,
) -> list[Path]:
    """Write trials.csv and curves.csv, best.yaml and rank<NN>_t<NNNN>.yaml; return the paths written."""
    table_dir = data_dir(study.study_name, data_root)
    written = [
        atomic_write(table_dir / "trials.csv", trials_frame(study).to_csv(index=False)),
        atomic_write(table_dir / "curves.csv", curves_frame(study, space.metric).to_csv(index=False)),
    ]
    config_dir = configs_dir(study.study_name, configs_root)
    ranked = ranked_trials(study)[:top_k]
    keep = set()
    for rank, trial in enumerate(ranked, start=1):
        text = replay_config(study, space, trial, rank)
        path = atomic_write(config_dir / f"rank{rank:02d}_t{trial.number:04d}.yaml", text)
        keep.add(path.name)
        written.append(path)
        if rank == 1:
            written.append(atomic_write(config_dir / "best.yaml", text))
            keep.add("best.yaml")
    for stale in config_dir.glob("*.yaml") if config_dir.is_dir() else []:
        if stale.name not in keep:  # the ranking moved since the last write
            stale.unlink()
    return written


def replay_config(study: optuna.Study, space: SearchSpace, trial: optuna.trial.FrozenTrial, rank: int) -> str:
    """The full config of a trial, with a header saying where it came from and how to run it."""
    resolved = trial_config(space, decoded_params(space, trial.params))
    header = (
        f"# study {study.study_name!r}, trial {trial.number} (rank {rank}): {space.metric} = {trial.value:.6f}\n"
        "# replay: python -m lit_tuning fit --config configs/base.yaml --config <this file>\n"
    )
    return header + composition_header(resolved.experiment) + dump_config(resolved, "yaml")
