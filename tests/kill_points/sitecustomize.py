"""Test hook: SIGKILL this process at a chosen instant, once, when LIT_TUNING_KILL_AT names it.

LIT_TUNING_KILL_AT=statement:N   the N-th SQL statement any SQLAlchemy engine runs (e.g. inside a store migration)
LIT_TUNING_KILL_AT=trial_run     right after MLflow created a trial's run, before anything recorded its id
LIT_TUNING_KILL_ONCE=<file>      kill only while this file is absent (it is created just before the kill), so a
                                 respawned process runs through
"""

import os
import signal
from pathlib import Path

_POINT = os.environ.get("LIT_TUNING_KILL_AT", "")
_ONCE = os.environ.get("LIT_TUNING_KILL_ONCE")


def _kill() -> None:
    if _ONCE:
        if Path(_ONCE).exists():
            return
        Path(_ONCE).touch()
    os.kill(os.getpid(), signal.SIGKILL)


if _POINT.startswith("statement:"):
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    _limit, _count = int(_POINT.split(":")[1]), [0]

    @event.listens_for(Engine, "before_cursor_execute")
    def _count_statement(*args, **kwargs) -> None:
        _count[0] += 1
        if _count[0] == _limit:
            _kill()

elif _POINT == "trial_run":
    from mlflow.tracking import MlflowClient

    _create_run = MlflowClient.create_run

    def _create_then_die(self, experiment_id, *args, **kwargs):
        run = _create_run(self, experiment_id, *args, **kwargs)
        if "trial" in (kwargs.get("tags") or {}):
            _kill()
        return run

    MlflowClient.create_run = _create_then_die
