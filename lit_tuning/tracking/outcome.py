"""How a run ended, and how each tracker spells that state."""

from __future__ import annotations

import dataclasses
from typing import Literal

State = Literal["completed", "pruned", "failed", "interrupted"]

# MLflow has no "pruned": a pruned trial is KILLED with the tag lit_tuning.state=pruned, never FAILED.
MLFLOW_STATUS: dict[State, str] = {
    "completed": "FINISHED",
    "pruned": "KILLED",
    "interrupted": "KILLED",
    "failed": "FAILED",
}
# W&B marks a run failed from a non-zero exit code; pruned and interrupted runs exit 0 and say so in the summary.
WANDB_EXIT_CODE: dict[State, int] = {"completed": 0, "pruned": 0, "interrupted": 0, "failed": 1}
STATE_TAG = "lit_tuning.state"
ERROR_TAG = "lit_tuning.error"


@dataclasses.dataclass
class Outcome:
    """The end state of a run and, for a failure, its reason."""

    state: State = "completed"
    error: str | None = None

    @classmethod
    def from_lightning_status(cls, status: str) -> Outcome:
        """Map the status Lightning passes to `Logger.finalize` (success, finished or failed) to an outcome."""
        return cls("completed" if status in ("success", "finished") else "failed")

    @classmethod
    def from_exception(cls, exception: BaseException) -> Outcome:
        """Classify an exception that ended a run: a tuner's prune, a user's Ctrl-C, or a failure."""
        from optuna import TrialPruned

        if isinstance(exception, TrialPruned):
            return cls("pruned", str(exception) or "pruned by the tuner")
        if isinstance(exception, KeyboardInterrupt):
            return cls("interrupted", "interrupted by the user")
        return cls("failed", f"{type(exception).__name__}: {exception}")
