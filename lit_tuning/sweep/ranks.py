"""One rank of a trial that spans devices (DDP): the trial's `fit`, started by the worker and re-run by Lightning.

Lightning starts the other ranks of a DDP run by re-running the current command line with LOCAL_RANK set
(its subprocess launcher; ddp_spawn would pickle the trial's callbacks and storage instead). A sweep worker's own
command line asks the study for new trials, so the worker runs a DDP trial as this separate command, whose
arguments name the trial: re-running it gives every rank the same trial. Rank 0 reports to Optuna and decides
pruning for all ranks (StepPruningCallback broadcasts it); the other ranks never touch the study. The worker keeps
the heartbeat and tells the study how the trial ended, from the outcome file rank 0 writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.utilities import rank_zero_only

from lit_tuning.experiment.search_space import load_search_space
from lit_tuning.experiment.strategies import make_pruner
from lit_tuning.files import atomic_write
from lit_tuning.processes import die_with_parent
from lit_tuning.sweep.objective import Objective, TrialFacts
from lit_tuning.sweep.pruning import StepPruningCallback
from lit_tuning.sweep.storage import open_storage
from lit_tuning.train.cli import cli_main


def add_arguments(parser: ArgumentParser) -> None:
    """The rank command's arguments: which trial, where its study lives, where the outcome goes (fit's after --)."""
    parser.add_argument("--search-space", required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--trial-id", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--outcome", type=Path, required=True)


def serve_rank(options: Namespace) -> int:
    """Run this rank of the trial's `fit`; rank 0 reports to Optuna and writes the outcome for the worker."""
    die_with_parent()  # a killed worker (or rank 0) takes its ranks along
    rank_zero = rank_zero_only.rank == 0  # from the environment Lightning gives the ranks it starts
    space = load_search_space(options.search_space)
    trial = None
    if rank_zero:
        storage = open_storage(options.storage)
        study = optuna.load_study(study_name=options.study, storage=storage, pruner=make_pruner(space))
        trial = optuna.Trial(study, options.trial_id)
    facts = TrialFacts(trial, options.run_dir) if trial is not None else None
    callbacks = [StepPruningCallback(trial, monitor=space.metric), *([facts] if facts else [])]
    try:
        cli = cli_main([arg for arg in options.fit_args if arg != "--"], callbacks=callbacks)
        value = cli.trainer.callback_metrics.get(space.metric)
        outcome = {"state": "complete", "value": None if value is None else float(value)}
    except optuna.TrialPruned as pruned:
        outcome = {"state": "pruned", "reason": str(pruned)}
    finally:
        if facts is not None:
            Objective.record(trial, **facts.facts())
    if rank_zero:
        atomic_write(options.outcome, json.dumps(outcome))
    return 0
