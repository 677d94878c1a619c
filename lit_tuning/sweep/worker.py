"""A worker process: takes the study's next trial under the study lock, runs it with a heartbeat, reports it."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from types import FrameType

import optuna
import sqlalchemy
import torch
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import TrialState

from lit_tuning.experiment.search_space import ENUMERATED, SearchSpace
from lit_tuning.experiment.strategies import make_sampler
from lit_tuning.sweep.objective import INTERRUPT_REQUESTED, Objective, TrialContext
from lit_tuning.sweep.storage import study_lock
from lit_tuning.sweep.study import WorkerLimits, retried_numbers
from lit_tuning.sweep.trial_record import BUDGETED
from lit_tuning.train import warm

log = logging.getLogger("lit_tuning.sweep")


def next_trial(
    study: optuna.Study, storage: RDBStorage, space: SearchSpace, limits: WorkerLimits
) -> optuna.Trial | None:
    """Return the next trial to run (a queued one first, else a newly sampled one), or None when the study is done.

    Decided and asked under the study lock, so N workers never start more trials than the budget.
    """
    with study_lock(storage, study.study_name):
        fail_stale_trials(study)  # a worker that stopped beating: fail its trial and queue the retry
        if limits.deadline is not None and time.time() >= limits.deadline:
            return None
        trials = study.get_trials(deepcopy=False)
        started = sum(trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) for trial in trials)
        waiting = any(trial.state == TrialState.WAITING for trial in trials)
        retried = retried_numbers(trials)
        # A killed or interrupted trial that is being retried is not a failure of its config.
        failures = sum(trial.state == TrialState.FAIL and trial.number not in retried for trial in trials)
        if started >= limits.n_trials:
            return None
        if limits.max_failures is not None and failures >= limits.max_failures:
            log.error("stopping: %d trials failed (limit %d); see the trials' reasons", failures, limits.max_failures)
            return None
        budgeted = sum(trial.state in BUDGETED for trial in trials)
        if not waiting and (space.strategy in ENUMERATED or budgeted >= limits.n_trials):
            return None
        if space.strategy not in ENUMERATED:
            # Seeded by the trial number: reproducible, and two workers never draw the same sequence
            # (one seed in every worker would give every worker the same "random" trials).
            study.sampler = make_sampler(dataclasses.replace(space, seed=space.seed + len(trials)))
        return study.ask()


@contextlib.contextmanager
def heartbeat(storage: RDBStorage, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat now and every interval until the block ends (a killed worker stops beating)."""
    interval = storage.get_heartbeat_interval() or 0
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial._trial_id)
            except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
                # The database is restarting: keep beating once it is back, rather than let the trial go stale.
                log.warning("heartbeat of trial %d not recorded (%s); retrying", trial.number, type(error).__name__)

    storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_trial(study: optuna.Study, storage: RDBStorage, trial: optuna.Trial, objective: Objective) -> TrialState:
    """Run one trial and tell the study how it ended; a failure is recorded, not raised (the study goes on)."""
    with heartbeat(storage, trial):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception:
            log.error("trial %d failed:\n%s", trial.number, traceback.format_exc())
            study.tell(trial, state=TrialState.FAIL)
            return TrialState.FAIL
    if not math.isfinite(value):  # the objective prunes non-finite values itself; this guards the contract
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    study.tell(trial, value)
    return TrialState.COMPLETE


def work(
    study: optuna.Study, storage: RDBStorage, context: TrialContext, limits: WorkerLimits, threads: int | None
) -> int:
    """Run trials until the study is done, the deadline passes, or Ctrl-C; return the process exit code."""
    if threads:
        torch.set_num_threads(threads)
    install_interrupt_handler()
    warm.enable()  # trials of one base model share its frozen weights, tokenizer and splits in this process
    objective = Objective(context)
    try:
        while (trial := next_trial(study, storage, context.space, limits)) is not None:
            log.info("%s: trial %d starts", context.worker, trial.number)
            state = run_trial(study, storage, trial, objective)
            log.info("%s: trial %d %s", context.worker, trial.number, state.name)
    except KeyboardInterrupt:
        log.warning("%s: interrupted; the trial is marked for resume from its last checkpoint", context.worker)
        return 130
    return 0


def install_interrupt_handler() -> None:
    """On SIGINT/SIGTERM: remember it was a stop request, then raise KeyboardInterrupt as Python would."""

    def handler(signum: int, frame: FrameType | None) -> None:
        INTERRUPT_REQUESTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
