"""The sweep driver: opens the study, starts one worker process per device, shows progress, writes the results."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import optuna
import sqlalchemy
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from lit_tuning.experiment.search_space import SearchSpace
from lit_tuning.paths import study_slug
from lit_tuning.sweep.attempts import close_dead_attempts, close_parent_run
from lit_tuning.sweep.devices import WorkerPlan
from lit_tuning.sweep.progress import count, progress_line
from lit_tuning.sweep.results import write_results
from lit_tuning.sweep.study import is_done, requeue_interrupted
from lit_tuning.sweep.trial_record import record_killed_reason, trials_frame
from lit_tuning.tracking.mlflow_study import prepare_study
from lit_tuning.tracking.settings import TrackingSettings
from lit_tuning.train.base_model import resolve_model_path

log = logging.getLogger("lit_tuning.sweep")
POLL_S = 2.0
QUIET_PROGRESS_S = 60.0  # repeat an unchanged progress line this often, so a long trial still shows life
STORAGE_OUTAGE_S = 300.0  # how long the driver waits out an unreachable database (a restart) before it gives up
STORAGE_ERRORS = (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError)
STOP_GRACE_S = 120.0  # after Ctrl-C, how long a worker may take to close its trial before it is killed


@dataclasses.dataclass
class SweepRun:
    """Everything the driver needs about one invocation."""

    study: optuna.Study
    space: SearchSpace
    plans: list[WorkerPlan]
    worker_args: list[str]  # `python -m lit_tuning.sweep worker` arguments shared by all workers
    fit_args: list[str]
    budget: int
    results_root: Path  # runs/, data/ and configs/ go below it
    top_k: int
    deadline: float | None = None
    mlflow_uri: str | None = None


class SweepDriver:
    """Runs the workers of one invocation to the end of the budget, the timeout or Ctrl-C."""

    def __init__(self, run: SweepRun) -> None:
        self.run = run
        self.workers: dict[int, subprocess.Popen] = {}
        self.respawns = 0
        self.max_respawns = 2 * len(run.plans) + 2
        self.started = time.monotonic()
        self.log_dir = run.results_root / "runs" / study_slug(run.study.study_name) / "logs"
        self.results_error: str | None = None  # set when the results could not be written (disk full, read-only)
        self.tracking = TrackingSettings(root=str(run.results_root), mlflow_tracking_uri=run.mlflow_uri)
        self.failed_seen = -1  # failed trials when their runs were last closed

    def prepare(self) -> None:
        """Resume an earlier invocation: requeue Ctrl-C'd trials, close dead attempts, build the base model."""
        requeued = requeue_interrupted(self.run.study)
        if requeued:
            print(f"resuming interrupted trials {requeued} from their last checkpoints")
        settings = self.tracking
        prepare_study(
            settings.resolved_mlflow_uri(), settings.mlflow_experiment, settings.artifact_location(), self.study_name
        )
        closed = close_dead_attempts(self.run.study, settings)
        self.failed_seen = count(self.run.study).failed
        if closed:
            print(f"closed the tracker runs of killed attempts {closed} as failed")
        reference = self.run.space.resolved_base["model.model_name_or_path"]
        print(f"base model: {resolve_model_path(reference)}")  # built once here, not by N workers at once
        if self.run.study.get_trials(deepcopy=False):
            self.write_results()

    def execute(self) -> int:
        """Start the workers and supervise them; return the exit code of the sweep."""
        self.prepare()
        install_stop_handler()
        last_line, last_print = "", 0.0
        storage_down_since: float | None = None
        try:
            for plan in self.run.plans:
                self.spawn(plan)
            while True:
                try:
                    counts = count(self.run.study)
                    if counts.failed != self.failed_seen:  # a worker died and its trial was failed: close its runs now
                        self.failed_seen = counts.failed
                        close_dead_attempts(self.run.study, self.tracking)
                    line = progress_line(counts, self.run.budget, time.monotonic() - self.started)
                    news = line.split("] ", 1)[1]  # the clock always changes; print on news or after a quiet minute
                    if news != last_line or time.monotonic() - last_print > QUIET_PROGRESS_S:
                        print(line, flush=True)
                        last_line, last_print = news, time.monotonic()
                    if not self.supervise():
                        break
                    storage_down_since = None
                except STORAGE_ERRORS as error:  # a database restart: the workers carry on; wait for it to return
                    storage_down_since = storage_down_since or time.monotonic()
                    if time.monotonic() - storage_down_since > STORAGE_OUTAGE_S:
                        raise
                    log.warning("storage unreachable (%s); retrying", str(error).splitlines()[0][:200])
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.stop_workers()
            self.finish(done=False)
            print(
                "interrupted: running trials were stopped and will resume from their checkpoints; "
                "re-run the same command to continue the study"
            )
            return 130
        done = is_done(self.run.study, self.run.budget)
        self.finish(done=done)
        if self.results_error:
            return 1
        if done or (self.run.deadline is not None and time.time() >= self.run.deadline):
            return 0  # finished, or stopped by --timeout as asked (a re-run continues)
        summary = failure_summary(self.run.study)
        print(f"error: study {self.study_name!r} stopped before its budget: {summary}", file=sys.stderr)
        return 1

    def supervise(self) -> bool:
        """Replace workers that died; return False once nothing is left to run here."""
        alive = False
        for plan in self.run.plans:
            process = self.workers.get(plan.index)
            if process is None:
                continue
            code = process.poll()
            if code is None:
                alive = True
            elif code not in (0, 130):
                log.warning("%s exited with %s (log: %s)", plan.name, code, self.log_path(plan))
                self.record_death(plan, process)
                del self.workers[plan.index]
                if self.respawns < self.max_respawns:  # its trial is retried once its heartbeat is stale
                    self.respawns += 1
                    self.spawn(plan)
                    alive = True
            else:
                del self.workers[plan.index]
        if alive:
            return True
        return self.restart_if_work_left()

    def record_death(self, plan: WorkerPlan, process: subprocess.Popen) -> None:
        """Keep why a dead worker's trial stopped: Optuna fails it later, by heartbeat, with no reason of its own."""
        code = process.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        for trial in self.run.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("worker_pid") == process.pid:
                reason = f"{plan.name} (pid {process.pid}) {how} during the trial; log: {self.log_path(plan)}"
                record_killed_reason(self.run.study, trial.number, reason)

    def restart_if_work_left(self) -> bool:
        """With every worker gone: retry stale trials, wait for trials running elsewhere, or end."""
        study = self.run.study
        if self.run.deadline is not None and time.time() >= self.run.deadline:
            return False
        if is_done(study, self.run.budget):
            return False
        fail_stale_trials(study)
        counts = count(study)
        if counts.waiting and self.respawns < self.max_respawns:
            self.respawns += 1
            for plan in self.run.plans:
                self.spawn(plan)
            return True
        # Trials running on other machines, or a dead worker's trial not yet past its heartbeat grace period:
        # wait for them. Otherwise the workers stopped on their own (budget, deadline or failure limit).
        return counts.running > 0

    def spawn(self, plan: WorkerPlan) -> None:
        """Start one worker process in its own session (so a terminal's Ctrl-C reaches the driver only)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "lit_tuning.sweep",
            "worker",
            *self.run.worker_args,
            f"--worker-name={plan.name}",
            f"--device={plan.device}",
            f"--threads={plan.threads}",
            f"--devices-per-trial={plan.devices_per_trial}",
            "--",
            *plan.fit_args,
            *self.run.fit_args,
        ]
        with open(self.log_path(plan), "a") as log_file:
            self.workers[plan.index] = subprocess.Popen(
                command,
                env={**os.environ, **plan.env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def study_name(self) -> str:
        """The study's name."""
        return self.run.study.study_name

    def write_results(self) -> list[Path]:
        """Write the study's tables and configs under the results root; a full or read-only disk is reported, and
        the sweep exits non-zero at its end, but the study (in its storage) and earlier files stay whole."""
        root = self.run.results_root
        study, space, top_k = self.run.study, self.run.space, self.run.top_k
        try:
            written = write_results(study, space, top_k=top_k, data_root=root / "data", configs_root=root / "configs")
            self.results_error = None  # the latest write is what the user is left with
            return written
        except OSError as error:
            self.results_error = f"cannot write the results under {root}: {error}"
            print(
                f"error: {self.results_error}; earlier result files are unchanged and the study is safe in its "
                "storage: free space (or fix the folder) and re-run the same command to write them",
                file=sys.stderr,
            )
            return []

    def log_path(self, plan: WorkerPlan) -> Path:
        """Where a worker's output goes."""
        return self.log_dir / f"{plan.name}.log"

    def stop_workers(self) -> None:
        """Ask each worker to stop (SIGINT: its trial is marked for resume), then kill those that do not."""
        for process in self.workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.workers.values():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def finish(self, *, done: bool) -> None:
        """Close dead attempts' trackers and the parent run, write the results, print the summary."""
        study = self.run.study
        close_dead_attempts(study, self.tracking)
        close_parent_run(study, finished=done, tracking=self.tracking)
        written = self.write_results() if study.get_trials(deepcopy=False) else []
        counts = count(study)
        print(progress_line(counts, self.run.budget, time.monotonic() - self.started))
        if not done and counts.done < self.run.budget:
            print(
                f"study {study.study_name!r} is not finished ({counts.done}/{self.run.budget}): "
                "re-run the same command to continue it"
            )
        for path in written:
            print(f"  wrote {path}")


def failure_summary(study: optuna.Study, shown: int = 3) -> str:
    """How many trials failed and their most common reasons, e.g. for a study in which every trial failed."""
    trials = trials_frame(study)
    failed = trials[trials["state"] == "FAIL"]
    finished = int(trials["state"].isin(("COMPLETE", "PRUNED")).sum())
    reasons = failed["reason"].fillna("").replace("", "no reason recorded").value_counts().head(shown)
    listed = "; ".join(f"{count} x {reason.splitlines()[0][:200]}" for reason, count in reasons.items())
    return f"{len(failed)} trial(s) failed, {finished} finished" + (f"; reasons: {listed}" if listed else "")


def install_stop_handler() -> None:
    """SIGTERM stops the sweep like Ctrl-C does."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
