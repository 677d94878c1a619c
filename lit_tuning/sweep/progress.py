"""What a study looks like right now: the one-line progress of a running sweep and the `make status` table."""

from __future__ import annotations

import dataclasses
import datetime

import optuna
from optuna.trial import TrialState

from lit_tuning.sweep.trial_record import PARAM_PREFIX, param_columns, trials_frame


@dataclasses.dataclass(frozen=True)
class Counts:
    """Trials of a study by state, and its best so far."""

    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    best_value: float | None
    best_number: int | None
    best_params: dict

    @property
    def finished(self) -> int:
        """Trials that used up budget and ended."""
        return self.complete + self.pruned


def count(study: optuna.Study) -> Counts:
    """Count the study's trials by state and find its best completed trial."""
    trials = study.get_trials(deepcopy=False)
    by_state = {state: sum(trial.state == state for trial in trials) for state in TrialState}
    completed = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    best = None
    if completed:
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best = pick(completed, key=lambda trial: trial.value)
    return Counts(
        complete=by_state[TrialState.COMPLETE],
        pruned=by_state[TrialState.PRUNED],
        failed=by_state[TrialState.FAIL],
        running=by_state[TrialState.RUNNING],
        waiting=by_state[TrialState.WAITING],
        best_value=best.value if best else None,
        best_number=best.number if best else None,
        best_params=dict(best.params) if best else {},
    )


def progress_line(counts: Counts, budget: int, elapsed_s: float) -> str:
    """One line: done/total, running, pruned, failed, best value and its params."""
    clock = str(datetime.timedelta(seconds=int(elapsed_s)))
    line = (
        f"[{clock}] {counts.finished}/{budget} done ({counts.complete} complete, {counts.pruned} pruned), "
        f"{counts.running} running, {counts.failed} failed"
    )
    if counts.best_value is not None:
        params = " ".join(f"{key.split('.')[-1]}={short(value)}" for key, value in counts.best_params.items())
        line += f" | best {counts.best_value:.4f} (t{counts.best_number:04d}: {params})"
    return line


def short(value: object) -> str:
    """Format a parameter value compactly (4 significant digits for floats)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def status_table(study: optuna.Study) -> str:
    """The study's trials as a text table, best first, with the progress line on top."""
    frame = trials_frame(study)
    budget = int(study.user_attrs.get("budget", len(frame)))
    lines = [f"study {study.study_name!r}: " + progress_line(count(study), budget, 0).split("] ", 1)[1]]
    if frame.empty:
        return lines[0] + "\n(no trials yet)"
    params = param_columns(frame)
    columns = ["number", "state", "value", "steps", "duration_s", *params, "reason"]
    shown = frame.sort_values(["value", "number"], ascending=[False, True], na_position="last")[columns]
    shown = shown.rename(columns={column: column.removeprefix(PARAM_PREFIX).split(".")[-1] for column in params})
    shown["value"] = shown["value"].map(lambda value: "" if value != value else f"{value:.4f}")
    shown["duration_s"] = shown["duration_s"].map(lambda value: "" if value != value else f"{value:.0f}")
    shown["reason"] = shown["reason"].fillna("").astype(str).str.slice(0, 60)
    for column in shown.columns:
        if shown[column].dtype == float:
            shown[column] = shown[column].map(short)
    lines.append(shown.to_string(index=False, na_rep=""))
    return "\n".join(lines)
