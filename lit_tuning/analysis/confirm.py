"""`make confirm`: re-run a study's top-k configs and its untuned base config over seeds, into confirm.csv."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from jsonargparse import Namespace

from lit_tuning.analysis.report import ROOT, ReportError, load_existing_study
from lit_tuning.analysis.report_data import study_space
from lit_tuning.analysis.significance import BASE_LABEL
from lit_tuning.commands import Count, add_study_options, command_parser, parse_or_exit, split_known
from lit_tuning.experiment.config import ConfigError, Experiment, compose, save_config
from lit_tuning.files import atomic_write
from lit_tuning.paths import BASE_CONFIG, study_slug
from lit_tuning.processes import tied_to_this_process
from lit_tuning.sweep.attempts import close_run_trackers
from lit_tuning.sweep.devices import with_threads
from lit_tuning.tracking.settings import TRACKING_RECORD
from lit_tuning.train.metrics import PRIMARY_METRIC

CONFIRM_COLUMNS = ["config", "seed", "value", "run_dir"]
ATTEMPT_KILLED = "confirm was killed before this run finished; a later confirm re-ran it in a new run directory"


@dataclasses.dataclass(frozen=True)
class Job:
    """One re-run: a config label, the files and overrides that compose it, the seed, and the study's metric."""

    label: str
    experiment: Experiment
    seed: int
    metric: str = PRIMARY_METRIC


def plan(study_name: str, *, storage: str, root: Path, top_k: int, seeds: int) -> list[Job]:
    """The re-runs: the top-k rank files the sweep wrote, then the base config, each with seeds 0..seeds-1."""
    study = load_existing_study(study_name, storage)
    slug = study_slug(study.study_name)
    config_dir = root / "configs" / slug
    ranked = sorted(config_dir.glob("rank*_t*.yaml"))[:top_k]
    if not ranked:
        raise ReportError(f"{config_dir}: no rank<NN>_t<NNNN>.yaml configs; run `make sweep` for study {study_name!r}")
    space = study_space(study)
    if space is None:
        raise ReportError(
            f"study {study_name!r}: user attribute search_space = {study.user_attrs.get('search_space')!r} is not a "
            "readable search-space file; allowed: the path the sweep recorded"
        )
    configs = [(path.stem, Experiment((BASE_CONFIG, str(path)))) for path in ranked]
    configs.append((BASE_LABEL, space.base))
    metric = study.user_attrs.get("metric", PRIMARY_METRIC)  # a minimised study's val/loss, not always accuracy
    return [Job(label, experiment, seed, metric) for label, experiment in configs for seed in range(seeds)]


def final_value(run_dir: Path, metric: str = PRIMARY_METRIC) -> float:
    """The last logged value of the metric in a run's metrics.csv."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise ReportError(f"{path}: missing; the fit did not log metrics")
    frame = pd.read_csv(path)
    if metric not in frame or frame[metric].dropna().empty:
        raise ReportError(f"{path}: no {metric!r} column with values; allowed columns: {', '.join(frame.columns)}")
    return float(frame[metric].dropna().iloc[-1])


def run_jobs(
    study_name: str,
    jobs: list[Job],
    *,
    root: Path,
    max_steps: int | None = None,
    extra: tuple[str, ...] = (),
    workers: int = 1,
) -> Path:
    """Run each job not yet in confirm.csv (so an interrupted confirm resumes), `workers` at a time, and rewrite
    the table after each finished run."""
    slug = study_slug(study_name)
    table = root / "data" / slug / "confirm.csv"
    done = pd.read_csv(table) if table.is_file() else pd.DataFrame(columns=CONFIRM_COLUMNS)
    rows = done.to_dict("records")
    finished = {(str(row["config"]), int(row["seed"])) for row in rows}
    runs_root = root / "runs" / f"{slug}-confirm"
    # Side by side, each run gets its share of the cores, so their thread pools never oversubscribe them.
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = with_threads(threads) if workers > 1 else None
    lock, failed = threading.Lock(), threading.Event()
    todo = [job for job in jobs if (job.label, job.seed) not in finished]
    frozen = freeze(todo, table.parent / "confirm_configs", table)  # every config is checked before any fit starts
    # Attempts a kill left are closed here, one at a time, before any fit starts: closing a W&B run starts one.
    run_dirs = {(job.label, job.seed): next_attempt(runs_root, run_name(job, max_steps)) for job in todo}

    def run(job: Job) -> None:
        if failed.is_set():  # a failed run stops the queue; runs already going finish and are kept
            return
        run_dir = run_dirs[job.label, job.seed]
        args = ["--config", str(frozen[job.label]), "--seed_everything", str(job.seed), "--run_name", run_dir.name]
        args += ["--trainer.default_root_dir", str(runs_root), "--tracking.root", str(root)]
        args += ["--tracking.mlflow_experiment", "lit_tuning-confirm"]
        args += ["--trainer.max_steps", str(max_steps)] if max_steps else []
        print(f"confirm: {job.label} seed {job.seed}", flush=True)
        # The fit dies with this process: a killed confirm leaves no fit running on unseen, which its re-run would
        # race. This thread waits for the fit, so outlives it (Linux signals when the starting thread ends).
        command = tied_to_this_process([sys.executable, "-m", "lit_tuning", "fit", *args, *extra])
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            failed.set()
            raise ReportError(f"fit {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        row = {
            "config": job.label,
            "seed": job.seed,
            "value": final_value(run_dir, job.metric),
            "run_dir": str(run_dir),
        }
        with lock:
            rows.append(row)
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=CONFIRM_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write(table, buffer.getvalue())

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run, job) for job in todo]
    errors = [future.exception() for future in futures if future.exception()]
    if errors:
        raise errors[0]
    return table


def freeze(jobs: list[Job], folder: Path, table: Path) -> dict[str, Path]:
    """Compose each job's config once into folder/<label>.yaml, which its runs read instead of its files.

    Every seed of a config then runs the same values, even when a file it is composed from is edited while confirm
    runs. A later confirm that finds a config composing to other values than its frozen file refuses: the seeds in
    confirm.csv would mix two configs. Every config is checked before any file is written.
    """
    resolved, files, paths = {}, {}, {}
    for job in jobs:
        try:
            resolved[job.label] = compose(job.experiment)
        except ConfigError as error:
            raise ReportError(f"config {job.label!r} is refused before any run: {error}") from None
        files[job.label], paths[job.label] = job.experiment.files, folder / f"{job.label}.yaml"
    frozen = {label: path for label, path in paths.items() if path.is_file()}
    for label, path in frozen.items():
        changes = config_changes(compose(Experiment((str(path),))).namespace, resolved[label].namespace)
        if changes:
            raise ReportError(
                f"config {label!r} composes to other values than when confirm began ({'; '.join(changes)}), so its "
                f"seeds in {table} would mix two configs; allowed: restore {' + '.join(files[label])}, or start over "
                f"by removing {table} and {path}"
            )
    return {
        label: (frozen.get(label) or save_config(config, paths[label])).resolve() for label, config in resolved.items()
    }


def config_changes(before: Namespace, now: Namespace) -> list[str]:
    """'key: X then, Y now' for each config value that differs (the config files' own list aside)."""
    keys = sorted((set(before.keys()) | set(now.keys())) - {"config"})
    return [f"{key}: {before.get(key)!r} then, {now.get(key)!r} now" for key in keys if before.get(key) != now.get(key)]


def run_name(job: Job, max_steps: int | None) -> str:
    """The run directory name of a job's first attempt: confirm-<config>-s<seed>[-<N>steps]."""
    return f"confirm-{job.label}-s{job.seed}" + (f"-{max_steps}steps" if max_steps else "")


def next_attempt(runs_root: Path, name: str) -> Path:
    """Return the run directory of a job's next attempt: <name>, else <name>-a2, -a3, ...: the first not yet there.

    A directory that is there holds an attempt a killed confirm (or a killed fit) left unfinished: a job only
    reaches here when confirm.csv has no row for it. It is kept, with its MLflow and W&B runs closed as failed
    (not left RUNNING), and the job starts over from step 0 beside it, so that its value depends on the config and
    seed alone, never on where a kill fell.
    """
    attempt, run_dir = 1, runs_root / name
    while run_dir.exists():
        if (run_dir / TRACKING_RECORD).is_file():
            close_run_trackers(run_dir, ATTEMPT_KILLED)
        attempt += 1
        run_dir = runs_root / f"{name}-a{attempt}"
    return run_dir


def main(argv: list[str] | None = None) -> int:
    """Command line: plan and run the re-runs of one study (default: the most recent)."""
    parser = command_parser("python -m lit_tuning.analysis.confirm", __doc__)
    add_study_options(parser, study_help="study name (default: the study whose latest trial started last)")
    parser.add_argument("--root", type=Path, default=ROOT, help=f"results root (default {ROOT})")
    parser.add_argument("--top-k", type=Count, default=2, help="how many of the best configs to re-run (default 2)")
    parser.add_argument("--seeds", type=Count, default=3, help="seeds per config, 0..N-1 (default 3)")
    parser.add_argument("--max-steps", type=Count | None, default=None, help="override trainer.max_steps (smoke tests)")
    parser.add_argument(
        "--workers", type=Count, default=1, help="runs side by side, sharing the CPU cores (default 1; 2 on 2 cores)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    # Options the parser does not know go to every `fit` (e.g. --tracking.wandb_mode=disabled).
    own, extra = split_known(parser, sys.argv[1:] if argv is None else argv)
    args = parse_or_exit(parser, own)
    try:
        study = load_existing_study(args.study, args.storage)
        jobs = plan(study.study_name, storage=args.storage, root=args.root, top_k=args.top_k, seeds=args.seeds)
        if args.dry_run:
            for job in jobs:
                print(job.label, job.seed, " ".join(job.experiment.cli_args()))
            return 0
        table = run_jobs(
            study.study_name, jobs, root=args.root, max_steps=args.max_steps, extra=tuple(extra), workers=args.workers
        )
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"confirm table: {table}\nnext: make report STUDY={study.study_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
