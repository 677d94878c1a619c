"""The sweep command line: run a study (the default command), show its status, or serve as one of its workers."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

import optuna
from jsonargparse import ArgumentParser, Namespace

from lit_tuning.commands import (
    CommandLineError,
    Count,
    Seconds,
    add_study_options,
    command_parser,
    parse,
)
from lit_tuning.experiment.config import ConfigError, check_config, parse_args, save_config
from lit_tuning.experiment.search_space import SearchSpace, SearchSpaceError, design_size, load_search_space
from lit_tuning.paths import DEFAULT_SEARCH_SPACE, MAX_NAME_LENGTH, RESULTS_ROOT, SAFE_NAME, study_slug
from lit_tuning.sweep import ranks
from lit_tuning.sweep.devices import DeviceError, WorkerPlan, model_weight_bytes, plan_workers
from lit_tuning.sweep.driver import SweepDriver, SweepRun
from lit_tuning.sweep.objective import TrialContext
from lit_tuning.sweep.progress import status_table
from lit_tuning.sweep.results import DEFAULT_TOP_K, ResultsFolderError, check_writable
from lit_tuning.sweep.storage import DEFAULT_HEARTBEAT_S, StorageError, open_storage, silence_optuna
from lit_tuning.sweep.study import StudyMismatchError, WorkerLimits, open_study
from lit_tuning.sweep.trial_record import latest_study_name, load_study
from lit_tuning.sweep.worker import work
from lit_tuning.train.base_model import resolve_model_path

COMMANDS = ("run", "status", "worker", "rank")


def build_parser() -> ArgumentParser:
    """The sweep's command line: `run` (the default command), `status` and the internal `worker`."""
    parser = command_parser("python -m lit_tuning.sweep", __doc__)
    commands = parser.add_subcommands(required=True, dest="command")
    run = command_parser("run", "run a study (the default command); after --: extra `fit` arguments for every trial")
    _add_study_options(run)
    run.add_argument(
        "--workers",
        type=Count | None,
        default=None,
        help="worker processes (default: one per GPU x --workers-per-gpu; on CPU one 1-thread worker per core, "
        "fewer if memory cannot hold that many copies of the model)",
    )
    run.add_argument("--devices", default="auto", help="auto | cpu | GPU indices, e.g. 0,1 (default: auto)")
    run.add_argument("--workers-per-gpu", type=Count, default=1, help="workers sharing one GPU, for small models")
    run.add_argument(
        "--devices-per-trial", type=Count, default=1, help="GPUs (or CPU processes) of each trial, run as one DDP run"
    )
    run.add_argument("--timeout", type=Seconds | None, default=None, help="seconds after which no new trial starts")
    run.add_argument("--mlflow-uri", type=str | None, default=None, help="MLflow store or server for every trial")
    run.add_argument("--top-k", type=Count, default=DEFAULT_TOP_K, help="configs written besides best.yaml")
    run.add_argument("--max-failures", type=Count | None, default=None, help="stop after this many failed trials")
    run.add_argument(
        "--continue-changed-space",
        action="store_true",
        help="continue an existing study although its search space's ranges or base were edited since",
    )
    commands.add_subcommand("run", run, help="run a study (the default command)")
    status = command_parser("status", "print the trials table of a running or finished study")
    add_study_options(status, study_help="study name (default: the most recent study in the storage)")
    commands.add_subcommand("status", status, help="print the trials table of a running or finished study")
    worker = command_parser("worker", "one worker of a study (started by the driver)")
    _add_study_options(worker)
    worker.add_argument("--worker-name", default="worker-0")
    worker.add_argument("--device", default="cpu")
    worker.add_argument("--threads", type=Count | None, default=None)
    worker.add_argument("--devices-per-trial", type=Count, default=1)
    worker.add_argument("--deadline", type=Seconds | None, default=None)
    worker.add_argument("--max-failures", type=Count | None, default=None)
    commands.add_subcommand("worker", worker, help="one worker of a study (started by the driver)")
    rank = command_parser("rank", "one rank of a DDP trial (started by a worker)")
    ranks.add_arguments(rank)
    commands.add_subcommand("rank", rank, help="one rank of a DDP trial (started by a worker)")
    return parser


def _add_study_options(parser: ArgumentParser) -> None:
    add_study_options(parser, study_help="study name (default: the search space's name)")
    parser.add_argument("--search-space", default=DEFAULT_SEARCH_SPACE, help="search space YAML file")
    parser.add_argument("--n-trials", type=Count | None, default=None, help="total trial budget; re-runs continue")
    parser.add_argument("--heartbeat", type=Count, default=DEFAULT_HEARTBEAT_S, help="seconds between heartbeats")
    parser.add_argument(
        "--results-root",
        default=RESULTS_ROOT,
        help=f"folder of runs/, data/, configs/ and the local trackers' stores (default {RESULTS_ROOT})",
    )


def parse_command_line(argv: list[str]) -> Namespace:
    """Parse a sweep command line (`run` when no command is named); `fit` arguments come after `--`."""
    split = argv.index("--") if "--" in argv else len(argv)
    own, fit_args = argv[:split], argv[split + 1 :]
    if not own or own[0] not in COMMANDS and own[0] not in ("-h", "--help"):
        own.insert(0, "run")
    parsed = parse(build_parser(), own)
    options = parsed[parsed.command].clone()
    options.command = parsed.command
    if fit_args and options.command == "status":
        raise CommandLineError(f"status takes no `fit` arguments; allowed: nothing after -- (got {fit_args})")
    options.fit_args = fit_args
    return options


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; exit 2 with the reason on bad input, before any trial."""
    try:
        options = parse_command_line(list(sys.argv[1:] if argv is None else argv))
    except CommandLineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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


def check_fit_args(space: SearchSpace, plan: WorkerPlan, fit_args: list[str], given: list[str]) -> None:
    """Parse and check the trials' `fit` arguments once, over the space's base, before any trial starts.

    `given` are the user's own arguments after --, the ones the error message names.
    """
    try:
        check_config(parse_args([*plan.fit_args, *fit_args], space.resolved_base.namespace), this_machine=True)
    except ConfigError as error:
        reason = " ".join(str(error).split())  # the parser's message spans lines; one line here
        raise ConfigError(f"`fit` arguments after -- {' '.join(given)}: {reason}") from None


def resolve_budget(options: Namespace, space: SearchSpace) -> int:
    """The study's total trial budget: --n-trials, else the design size (grid/oat), else the space's n_trials."""
    budget = options.n_trials or design_size(space) or space.n_trials
    if not budget or budget < 1:
        raise ConfigError(f"--n-trials {options.n_trials}; allowed: an integer >= 1")
    return budget


def study_name(options: Namespace, space: SearchSpace) -> str:
    """The study's name: --study, else the space's name; refused unless it is a safe directory name."""
    name = options.study or space.name
    if not SAFE_NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        source = "--study" if options.study else f"{space.path}: name"
        raise ConfigError(
            f"{source} {name!r} is not a safe name; allowed: up to {MAX_NAME_LENGTH} letters, digits, '.', '_' "
            "and '-', not starting with '.'"
        )
    return name


def run_sweep(options: Namespace) -> int:
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
    fit_args = [f"--tracking.root={options.results_root}", *options.fit_args]  # the user's own args win
    if options.mlflow_uri:
        fit_args.append(f"--tracking.mlflow_tracking_uri={options.mlflow_uri}")
    check_fit_args(space, plans[0], fit_args, options.fit_args)
    check_writable(Path(options.results_root))
    storage = open_storage(options.storage, options.heartbeat)
    study = open_study(space, name, storage, budget, accept_changed_space=options.continue_changed_space)
    deadline = time.time() + options.timeout if options.timeout else None
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


def run_worker(options: Namespace) -> int:
    """Serve as one worker of a study (started by the driver)."""
    space = load_search_space(options.search_space)
    name, budget = study_name(options, space), resolve_budget(options, space)
    storage = open_storage(options.storage, options.heartbeat)
    study = open_study(space, name, storage, budget)  # refuses a space (base files included) edited since it began
    runs_root = Path(options.results_root) / "runs"
    base_config = runs_root / study_slug(name) / "logs" / f"{options.worker_name}-base.yaml"
    context = TrialContext(
        space=space,
        study_name=name,
        runs_root=runs_root,
        fit_args=tuple(options.fit_args),
        worker=options.worker_name,
        device=options.device,
        devices_per_trial=options.devices_per_trial,
        storage_url=options.storage,
        base_config=save_config(space.resolved_base, base_config).resolve(),
    )
    limits = WorkerLimits(budget, deadline=options.deadline, max_failures=options.max_failures or budget)
    return work(study, storage, context, limits, options.threads)


def show_status(options: Namespace) -> int:
    """Print the study's trials table."""
    name = options.study or latest_study_name(options.storage)
    print(status_table(load_study(name, options.storage)))
    return 0
