"""What a study looks like right now: the one-line progress of a running sweep and the `make status` table."""

from __future__ import annotations

import dataclasses
import datetime

import optuna

from lit_tuning.mappings import plain
from lit_tuning.sweep.trial_record import (
    DONE_STATES,
    FINISHED_STATES,
    PARAM_PREFIX,
    best_first,
    count_states,
    param_columns,
    study_direction,
    trials_frame,
)


@dataclasses.dataclass(frozen=True)
class Counts:
    """Trials of a study by state name (trial_record.count_states), and its best so far."""

    states: dict[str, int]
    best_value: float | None
    best_number: int | None
    best_params: dict

    complete = property(lambda self: self.states["COMPLETE"], doc="Completed trials.")
    pruned = property(lambda self: self.states["PRUNED"], doc="Pruned trials.")
    failed = property(lambda self: self.states["FAIL"], doc="Failed trials (each may be retried as a new one).")
    running = property(lambda self: self.states["RUNNING"], doc="Trials running now.")
    waiting = property(lambda self: self.states["WAITING"], doc="Trials queued to run.")

    @property
    def finished(self) -> int:
        """Trials that will not run again (trial_record.FINISHED_STATES)."""
        return sum(self.states[state] for state in FINISHED_STATES)

    @property
    def done(self) -> int:
        """Finished trials that used up budget (trial_record.DONE_STATES): what `done/budget` counts."""
        return sum(self.states[state] for state in DONE_STATES)


def count(study: optuna.Study) -> Counts:
    """Count the study's trials by state and find its best completed trial (in the study's direction)."""
    frame = trials_frame(study)
    ranked = best_first(frame, direction=study_direction(study))
    # Not Study.best_trial: it would rank a diverged trial's inf first in a maximised study; best_first leaves it out.
    best = ranked.iloc[0] if len(ranked) else None
    return Counts(
        states=count_states(frame["state"]),
        best_value=None if best is None else float(best["value"]),
        best_number=None if best is None else int(best["number"]),
        best_params={} if best is None else {c.removeprefix(PARAM_PREFIX): best[c] for c in param_columns(frame)},
    )


def progress_line(counts: Counts, budget: int, elapsed_s: float) -> str:
    """One line: done/total, running, pruned, failed, best value and its params."""
    clock = str(datetime.timedelta(seconds=int(elapsed_s)))
    line = (
        f"[{clock}] {counts.done}/{budget} done ({counts.complete} complete, {counts.pruned} pruned), "
        f"{counts.running} running, {counts.failed} failed"
    )
    if counts.best_value is not None:
        params = " ".join(f"{key.split('.')[-1]}={short(value)}" for key, value in counts.best_params.items())
        line += f" | best {counts.best_value:.4f} (t{counts.best_number:04d}: {params})"
    return line


def short(value: object) -> str:
    """Format a parameter value compactly (4 significant digits for floats)."""
    value = plain(value)  # a numpy scalar from the trials table as its Python value
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def status_table(study: optuna.Study) -> str:
    """The study's trials as a text table, best first in the study's direction, with the progress line on top."""
    frame = trials_frame(study)
    direction = study_direction(study)
    budget = int(study.user_attrs.get("budget", len(frame)))
    header = f"study {study.study_name!r} ({direction}): "
    lines = [header + progress_line(count(study), budget, 0).split("] ", 1)[1]]
    if frame.empty:
        return lines[0] + "\n(no trials yet)"
    params = param_columns(frame)
    columns = ["number", "state", "value", "steps", "duration_s", *params, "reason"]
    ranked = best_first(frame, direction=direction)
    # Ranked trials first, best first; then the rest (pruned, failed, running, non-finite) by number.
    shown = frame.loc[[*ranked.index, *frame.index.difference(ranked.index)], columns]
    shown = shown.rename(columns={column: column.removeprefix(PARAM_PREFIX).split(".")[-1] for column in params})
    shown["value"] = shown["value"].map(lambda value: "" if value != value else f"{value:.4f}")
    shown["duration_s"] = shown["duration_s"].map(lambda value: "" if value != value else f"{value:.0f}")
    shown["reason"] = shown["reason"].fillna("").astype(str).str.slice(0, 60)
    for column in shown.columns:
        if shown[column].dtype == float:
            shown[column] = shown[column].map(short)
    lines.append(shown.to_string(index=False, na_rep=""))
    return "\n".join(lines)
