"""`make chaos`: SIGKILL a micro study's workers and driver at random moments; re-run it; check nothing was lost.

Each kill waits for a moment of the study (the driver's first start-up, a worker loading its model, mid-step, a
validation with its checkpoint save, the driver writing results), then SIGKILLs a worker (the driver must replace
it) or the driver with all its workers (a re-run must resume). After the kills the sweep is re-run until it ends and
the study, the MLflow store and the run directories are checked. The figures go to <out>/chaos.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import psutil
import yaml

from lit_tuning.bench.chaos_checks import check, passed
from lit_tuning.commands import Count, NonNegativeCount, command_parser, parse_or_exit
from lit_tuning.files import atomic_write
from lit_tuning.paths import BENCH_ROOT, data_dir, sqlite_file
from lit_tuning.tracking.settings import TrackingSettings

STUDY = "chaos"
POINTS = ("startup", "model_load", "mid_step", "validation", "export")
POLL_S = 0.1
EXPORT_POLL_S = 0.002
WAIT_S = 600.0  # the longest a kill waits for its moment before it is recorded as missed (a loaded machine is slow)
MICRO_BASE = {
    "configs": ["configs/base.yaml", "configs/hyperparameters/training/quick.yaml"],
    "overrides": {
        "model.model_name_or_path": "embedded:micro",
        "data.num_words": 300,
        "trainer.val_check_interval": 10,
        "trainer.log_every_n_steps": 1,  # every step reaches MLflow: a killed attempt's last step is known
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
    },
}


@dataclasses.dataclass
class Kill:
    """One SIGKILL: the moment aimed at, whom it hit, and what the study looked like then."""

    point: str
    target: str  # "worker" (the driver lives on) or "driver" (with its workers: the whole machine is lost)
    hit: bool  # the moment was seen; False: it never came within WAIT_S and the kill happened anyway
    at_s: float  # seconds since this driver started
    trial: int | None = None
    step: int | None = None  # the trial's last validation step before the kill


def chaos_space(folder: Path, trials: int, steps: int, seed: int) -> Path:
    """A random study on the micro model, no pruning (every finished trial trains `steps` steps)."""
    document = {
        "name": STUDY,
        "strategy": "random",
        "n_trials": trials,
        "seed": seed,
        "objective": {"metric": "val/letter_position_accuracy"},
        "pruner": "none",
        "base": {**MICRO_BASE, "overrides": {**MICRO_BASE["overrides"], "trainer.max_steps": steps}},
        "parameters": {"model.learning_rate": {"low": 1.0e-4, "high": 3.0e-2, "log": True}},
    }
    path = folder / f"{STUDY}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class Chaos:
    """Drives the sweep of one study in a work folder, killing it at chosen moments."""

    def __init__(self, work: Path, space: Path, *, workers: int, seed: int) -> None:
        self.work, self.space, self.workers = work, space, workers
        self.storage = f"sqlite:///{work / 'optuna.db'}"
        self.random = random.Random(seed)
        self.driver: subprocess.Popen | None = None
        self.started = 0.0
        self._study: optuna.Study | None = None
        self.crashes = 0  # drivers in a row that exited non-zero by themselves (e.g. a broken tracker store)

    def command(self) -> list[str]:
        """The user's sweep command for this study."""
        return [
            sys.executable, "-m", "lit_tuning.sweep", f"--search-space={self.space}", f"--storage={self.storage}",
            f"--results-root={self.work}", f"--workers={self.workers}", "--heartbeat=1",
        ]  # fmt: skip

    def start(self) -> None:
        """Start the driver (its output appended to driver.log)."""
        with open(self.work / "driver.log", "a") as log:
            log.write(f"\n=== driver started at {time.time():.3f}\n")
            log.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log is complete up to the kill
            self.driver = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        self.started = time.monotonic()

    def study(self) -> optuna.Study | None:
        """The study once the driver has created it (None before)."""
        if self._study is None:
            try:
                self._study = optuna.load_study(study_name=STUDY, storage=self.storage)
            except KeyError:
                return None
        return self._study

    def running(self) -> list[optuna.trial.FrozenTrial]:
        """Trials running now in a worker of the current driver (not those of a killed one, still RUNNING until
        their heartbeat goes stale)."""
        study = self.study()
        if study is None or self.driver is None:
            return []
        try:
            children = psutil.Process(self.driver.pid).children(recursive=True)
            # A killed worker stays a zombie until the driver reaps it: it must not be killed "again".
            workers = {child.pid for child in children if child.status() != psutil.STATUS_ZOMBIE}
        except psutil.NoSuchProcess:
            return []
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return [trial for trial in running if trial.user_attrs.get("worker_pid") in workers]

    def wait(self, moment: Callable[[], Any], interval: float = POLL_S) -> Any:
        """Poll until moment() returns something truthy (returned) or the driver ends or WAIT_S passes (None)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and self.driver is not None and self.driver.poll() is None:
            seen = moment()
            if seen:
                return seen
            time.sleep(interval)
        return None

    def kill(self, point: str, target: str) -> Kill:
        """Wait for the moment `point` of a live driver and SIGKILL the target; return what happened."""
        if self.driver is None or self.driver.poll() is not None:
            self.start()
        elif point == "startup":  # the driver is past its start-up: this is a kill at a random moment of its run
            point = "anytime"
        # A results write lasts milliseconds: look for it often (a cheap glob, not a database query).
        trial = self.wait(MOMENTS[point](self), EXPORT_POLL_S if point == "export" else POLL_S)
        assert self.driver is not None
        ended = self.driver.poll()
        self.crashes = self.crashes + 1 if ended not in (None, 0) else 0  # a driver that dies on its own
        victim = trial if isinstance(trial, optuna.trial.FrozenTrial) else None
        step = max(victim.intermediate_values, default=0) if victim else None
        at_s = round(time.monotonic() - self.started, 2)
        kill = Kill(point, target, bool(trial), at_s, victim.number if victim else None, step)
        if target == "worker" and victim is not None:
            kill_pid(victim.user_attrs.get("worker_pid"))
        else:
            kill.target = "driver"
            self.kill_driver()
        return kill

    def kill_driver(self) -> None:
        """SIGKILL the driver and every worker it started (a lost machine)."""
        assert self.driver is not None
        try:
            children = psutil.Process(self.driver.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        kill_pid(self.driver.pid)
        for child in children:
            kill_pid(child.pid)
        self.driver.wait()

    def run_to_end(self, attempts: int) -> tuple[int, int]:
        """Re-run the sweep with no kills until it exits 0; return (re-runs, last exit code)."""
        code = -1
        for run in range(1, attempts + 1):
            if self.driver is None or self.driver.poll() is not None:
                self.start()
            code = self.driver.wait()
            if code == 0:
                return run, code
        return attempts, code


def kill_pid(pid: int | None) -> None:
    """SIGKILL a process if it still exists."""
    if pid:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


def just_started(chaos: Chaos) -> Callable[[], Any]:
    """A trial whose worker recorded it but has not validated yet: the worker is loading its model or starting."""
    return lambda: next((t for t in chaos.running() if not t.intermediate_values), None)


def mid_step(chaos: Chaos) -> Callable[[], Any]:
    """A trial past its first validation, at a random moment between validations."""
    pause = chaos.random.uniform(0.0, 1.5)

    def moment() -> Any:
        trial = next((t for t in chaos.running() if t.intermediate_values), None)
        if trial is not None:
            time.sleep(pause)
        return trial

    return moment


def at_validation(chaos: Chaos) -> Callable[[], Any]:
    """A trial that has just reported a validation (its checkpoint is being saved around now)."""
    seen: dict[int, int] = {}

    def moment() -> Any:
        for trial in chaos.running():
            reported = len(trial.intermediate_values)
            if trial.number in seen and reported > seen[trial.number]:
                return trial
            seen[trial.number] = reported
        return None

    return moment


def during_startup(chaos: Chaos) -> Callable[[], Any]:
    """The driver's start-up: on the first run while it creates and migrates the MLflow store, else at random."""
    store = sqlite_file(TrackingSettings(root=str(chaos.work)).resolved_mlflow_uri())
    fresh = store is not None and not store.exists()
    delay = chaos.random.uniform(0.0, 1.0) if fresh else chaos.random.uniform(0.5, 6.0)
    until = [None if fresh else time.monotonic() + delay]

    def moment() -> bool:
        if until[0] is None and store.exists():  # the migration has begun: it takes seconds
            until[0] = time.monotonic() + delay
        return until[0] is not None and time.monotonic() >= until[0]

    return moment


def during_export(chaos: Chaos) -> Callable[[], Any]:
    """The driver writing the results tables or configs (atomic_write's temporary file exists)."""
    folders = [data_dir(STUDY, chaos.work / "data"), chaos.work / "configs" / STUDY]
    before = set(temporary_files(folders))  # left by an earlier kill mid-write: not this write
    return lambda: any(path not in before for path in temporary_files(folders))


def temporary_files(folders: list[Path]) -> list[Path]:
    """atomic_write's temporary files in the results folders (a write in progress, or one a kill cut short)."""
    return [path for folder in folders if folder.is_dir() for path in folder.glob(".*.tmp")]


MOMENTS = {
    "startup": during_startup,
    "model_load": just_started,
    "mid_step": mid_step,
    "validation": at_validation,
    "export": during_export,
    "anytime": during_startup,  # the same random delay, aimed at a driver already running
}


def chaos_figures(
    kills: list[Kill], reruns: int, code: int, findings: dict[str, Any], wall_s: float, conditions: dict[str, Any]
) -> dict[str, Any]:
    """What chaos.json holds: the kills by moment and target, the checks' findings, conditions and the kill log."""
    return {
        "kills": len(kills),
        "kills_by_point": {p: sum(k.point == p and k.hit for k in kills) for p in MOMENTS},
        "kills_missed_moment": sum(not k.hit for k in kills),
        "kills_of_driver": sum(k.target == "driver" for k in kills),
        "reruns_to_finish": reruns,
        "last_exit_code": code,
        **findings,
        "checks": passed(findings),
        "wall_s": round(wall_s, 1),
        "conditions": conditions,
        "kill_log": [dataclasses.asdict(kill) for kill in kills],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the chaos study and write chaos.json; exit 1 when any check fails."""
    parser = command_parser("python -m lit_tuning.bench.chaos", __doc__)
    parser.add_argument("--kills", type=Count, default=20, help="SIGKILLs before the study is run to its end")
    parser.add_argument("--trials", type=Count, default=12, help="the study's budget (enough to outlast the kills)")
    parser.add_argument("--steps", type=Count, default=40, help="training steps of every trial")
    parser.add_argument("--workers", type=Count, default=2)
    parser.add_argument("--seed", type=NonNegativeCount, default=0, help="chooses the kill moments and targets")
    parser.add_argument(
        "--spare-first-start",
        action="store_true",
        help="let the first start-up create the tracker stores before the first kill (default: kill it)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_ROOT, help="folder of chaos.json")
    parser.add_argument(
        "--work", type=Path | None, default=None, help="work folder (default: a new temporary folder, kept)"
    )
    args = parse_or_exit(parser, argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="lit_tuning-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(work, chaos_space(work, args.trials, args.steps, args.seed), workers=args.workers, seed=args.seed)
    started = time.monotonic()
    kills: list[Kill] = []
    aborted = None
    if args.spare_first_start:  # let the first start-up create the stores: measure the sweep, not the migration
        chaos.start()
        chaos.wait(chaos.running)
    for index in range(args.kills):
        first = index == 0 and not args.spare_first_start
        point = "startup" if first else chaos.random.choice(POINTS)  # the first start-up creates the stores
        # A worker kill is cheap (the driver replaces it); a driver kill costs a whole re-run's start-up.
        target = "driver" if point in ("startup", "export") else chaos.random.choice(("worker", "worker", "driver"))
        kills.append(chaos.kill(point, target))
        print(f"kill {index + 1}/{args.kills}: {kills[-1]}", flush=True)
        if chaos.crashes >= 2:
            aborted = f"the driver died by itself {chaos.crashes} times in a row: the study cannot be resumed"
            break
    reruns, code = chaos.run_to_end(attempts=2 if aborted else 5)
    findings = check(work, chaos.storage, STUDY, args.trials, args.steps) | {"aborted": aborted}
    conditions = {k: getattr(args, k) for k in ("trials", "steps", "workers", "seed", "spare_first_start")}
    figures = chaos_figures(kills, reruns, code, findings, time.monotonic() - started, conditions | {"work": str(work)})
    path = atomic_write(args.out / "chaos.json", json.dumps(figures, indent=2) + "\n")
    print(json.dumps({key: figures[key] for key in list(figures)[:-2]}, indent=2))
    print(f"wrote {path}")
    return 0 if all(figures["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
