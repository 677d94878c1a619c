"""The sweep command line: run a study (the default command), show its status, or serve as one of its workers."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import optuna

from lit_tuning.experiment.config import ConfigError, safe_name
from lit_tuning.experiment.search_space import SearchSpaceError, load_search_space
from lit_tuning.paths import DEFAULT_SEARCH_SPACE, DEFAULT_STORAGE, RESULTS_ROOT
from lit_tuning.sweep import ranks
from lit_tuning.sweep.devices import DeviceError, model_weight_bytes, plan_workers
from lit_tuning.sweep.driver import SweepDriver, SweepRun
from lit_tuning.sweep.objective import TrialContext
from lit_tuning.sweep.progress import status_table
from lit_tuning.sweep.results import DEFAULT_TOP_K, ResultsFolderError, check_writable
from lit_tuning.sweep.storage import DEFAULT_HEARTBEAT_S, StorageError, open_storage, silence_optuna
from lit_tuning.sweep.study import Budget, StudyMismatchError, design_size, open_study
from lit_tuning.sweep.trial_record import latest_study_name, load_study
from lit_tuning.sweep.worker import work
from lit_tuning.train.base_model import resolve_model_path

COMMANDS = ("run", "status", "worker", "rank")


def build_parser() -> argparse.ArgumentParser:
    """The sweep's command line: `run` (the default command), `status` and the internal `worker`."""
    parser = argparse.ArgumentParser(prog="python -m lit_tuning.sweep", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run a study (the default command)")
    _add_study_options(run)
    run.add_argument(
        "--workers",
        type=int,
        help="worker processes (default: one per GPU x --workers-per-gpu; on CPU one 1-thread worker per core, "
        "fewer if memory cannot hold that many copies of the model)",
    )
    run.add_argument("--devices", default="auto", help="auto | cpu | GPU indices, e.g. 0,1 (default: auto)")
    run.add_argument("--workers-per-gpu", type=int, default=1, help="workers sharing one GPU, for small models")
    run.add_argument(
        "--devices-per-trial",
        type=int,
        default=1,
        help="GPUs (or CPU processes) of each trial, run as one DDP run; default 1",
    )
    run.add_argument("--timeout", type=float, help="seconds after which no new trial starts (running ones finish)")
    run.add_argument("--mlflow-uri", help="MLflow store or server for every trial (the scale-out path)")
    run.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="configs written besides best.yaml")
    run.add_argument("--max-failures", type=int, help="stop after this many failed trials (default: the budget)")
    run.add_argument(
        "--continue-changed-space",
        action="store_true",
        help="continue an existing study although its search space's ranges or base were edited since",
    )
    run.add_argument("fit_args", nargs=argparse.REMAINDER, help="after --: extra `fit` arguments for every trial")
    status = commands.add_parser("status", help="print the trials table of a running or finished study")
    status.add_argument("--study", help="study name (default: the most recent study in the storage)")
    status.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    worker = commands.add_parser("worker", help=argparse.SUPPRESS)
    _add_study_options(worker)
    worker.add_argument("--worker-name", default="worker-0")
    worker.add_argument("--device", default="cpu")
    worker.add_argument("--threads", type=int)
    worker.add_argument("--devices-per-trial", type=int, default=1)
    worker.add_argument("--deadline", type=float)
    worker.add_argument("--max-failures", type=int)
    worker.add_argument("fit_args", nargs=argparse.REMAINDER)
    ranks.add_arguments(commands.add_parser("rank", help=argparse.SUPPRESS))  # one rank of a DDP trial
    return parser


def _add_study_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--search-space", default=DEFAULT_SEARCH_SPACE, help="search space YAML file")
    parser.add_argument("--study", help="study name (default: the search space's name)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    parser.add_argument("--n-trials", type=int, help="total trial budget; re-runs continue up to it")
    parser.add_argument("--heartbeat", type=int, default=DEFAULT_HEARTBEAT_S, help="seconds between heartbeats")
    parser.add_argument(
        "--results-root",
        default=RESULTS_ROOT,
        help=f"folder of runs/, data/, configs/ and the local trackers' stores (default {RESULTS_ROOT})",
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; exit 2 with the reason on bad input, before any trial."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "run")
    options = build_parser().parse_args(argv)
    options.fit_args = [arg for arg in getattr(options, "fit_args", []) if arg != "--"]
    silence_optuna()
    # Heartbeats and stale-trial retries are "experimental" in Optuna: one filter for driver and workers.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if options.command == "status":
            return show_status(options)
        if options.command == "rank":
            return ranks.serve_rank(options)
        return run_worker(options) if options.command == "worker" else run_sweep(options)
    except (SearchSpaceError, ConfigError, StorageError, StudyMismatchError, DeviceError, ResultsFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def resolve_budget(options: argparse.Namespace, space) -> int:
    """The study's total trial budget: --n-trials, else the design size (grid/oat), else the space's n_trials."""
    budget = options.n_trials or design_size(space) or space.n_trials
    if not budget or budget < 1:
        raise ConfigError(f"--n-trials {options.n_trials}; allowed: an integer >= 1")
    return budget


def study_name(options: argparse.Namespace, space) -> str:
    """The study's name: --study, else the space's name; refused unless it is a safe directory name."""
    name = options.study or space.name
    if safe_name(name) != name:
        raise ConfigError(f"--study {name!r} is not a safe name; allowed: letters, digits, '.', '_' and '-'")
    return name


def run_sweep(options: argparse.Namespace) -> int:
    """Run (or resume) a study with N workers until its budget is spent."""
    space = load_search_space(options.search_space)
    name, budget = study_name(options, space), resolve_budget(options, space)
    model_bytes = model_weight_bytes(resolve_model_path(space.resolved_base["model.model_name_or_path"]))
    plans = plan_workers(
        options.workers,
        options.devices,
        options.workers_per_gpu,
        devices_per_trial=options.devices_per_trial,
        model_bytes=model_bytes,
    )
    if options.top_k < 1:
        raise ConfigError(f"--top-k {options.top_k}; allowed: an integer >= 1")
    check_writable(Path(options.results_root))
    storage = open_storage(options.storage, options.heartbeat)
    study = open_study(space, name, storage, budget, accept_changed_space=options.continue_changed_space)
    deadline = time.time() + options.timeout if options.timeout else None
    fit_args = [f"--tracking.root={options.results_root}", *options.fit_args]  # the user's own args win
    if options.mlflow_uri:
        fit_args.append(f"--tracking.mlflow_tracking_uri={options.mlflow_uri}")
    worker_args = [
        f"--search-space={options.search_space}",
        f"--study={name}",
        f"--storage={options.storage}",
        f"--n-trials={budget}",
        f"--heartbeat={options.heartbeat}",
        f"--results-root={options.results_root}",
    ]
    if deadline is not None:
        worker_args.append(f"--deadline={deadline}")
    if options.max_failures is not None:
        worker_args.append(f"--max-failures={options.max_failures}")
    devices = ", ".join(plan.device for plan in plans)
    print(
        f"study {name!r}: {space.strategy}, {space.pruner} pruner, budget {budget} trials, "
        f"{len(plans)} worker(s) on {devices}; storage {options.storage}"
    )
    run = SweepRun(
        study,
        space,
        plans,
        worker_args,
        fit_args,
        budget,
        Path(options.results_root),
        options.top_k,
        deadline,
        mlflow_uri=options.mlflow_uri,
    )
    return SweepDriver(run).execute()


def run_worker(options: argparse.Namespace) -> int:
    """Serve as one worker of a study (started by the driver)."""
    space = load_search_space(options.search_space)
    name, budget = study_name(options, space), resolve_budget(options, space)
    storage = open_storage(options.storage, options.heartbeat)
    study = open_study(space, name, storage, budget)
    context = TrialContext(
        space=space,
        study_name=name,
        runs_root=Path(options.results_root) / "runs",
        fit_args=tuple(options.fit_args),
        worker=options.worker_name,
        device=options.device,
        devices_per_trial=options.devices_per_trial,
        storage_url=options.storage,
    )
    limits = Budget(budget, deadline=options.deadline, max_failures=options.max_failures or budget)
    return work(study, storage, context, limits, options.threads)


def show_status(options: argparse.Namespace) -> int:
    """Print the study's trials table."""
    name = options.study or latest_study_name(options.storage)
    print(status_table(load_study(name, options.storage)))
    return 0
