"""Derived tables of a finished study for the report: compute and best-so-far, the summary, pruning savings, Pareto."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lit_tuning.sweep.trial_record import (
    FINISHED_STATES,
    PARAM_PREFIX,
    ascending,
    best_first,
    count_states,
    param_columns,
)

TUNED_LENGTH = PARAM_PREFIX + "trainer.max_steps"  # the trials table's column when a study tunes training length


def with_compute(trials: pd.DataFrame, *, direction: str) -> pd.DataFrame:
    """Add compute (training tokens, or steps where tokens are unknown), its running total and the best value so far."""
    frame = trials.sort_values("number", ignore_index=True).copy()
    unit = "tokens" if frame["tokens"].notna().any() else "steps"
    frame["compute"] = frame[unit].astype("Float64").fillna(0).astype("float64")
    frame["cumulative_compute"] = frame["compute"].cumsum()
    rankable = frame.index.isin(best_first(frame, direction=direction).index)
    values = frame["value"].where(rankable)
    best = values.cummin() if ascending(direction) else values.cummax()
    frame["best_so_far"] = best.ffill()  # NaN until the first completed trial with a finite value
    frame.attrs["compute_unit"] = unit
    return frame


def study_summary(trials: pd.DataFrame, *, direction: str) -> dict:
    """Counts by state, the best completed trial, the untuned base-config trial, and the compute spent."""
    # The report ranks its one trials table (not Study.best_trial, which re-reads the storage): on a running study
    # every number of the report then comes from the same snapshot, and non-finite values are left out the same way.
    ranked = best_first(trials, direction=direction)
    best = ranked.iloc[0] if len(ranked) else None
    base = trials[(trials["is_base_config"].fillna(False)) & (trials["state"] == "COMPLETE")]
    complete = trials[trials["state"] == "COMPLETE"]
    nonfinite = complete[~np.isfinite(complete["value"].astype("float64"))]
    return {
        "n_trials": len(trials),
        "direction": direction,
        "counts": count_states(trials["state"]),
        "best_number": None if best is None else int(best["number"]),
        "best_value": None if best is None else float(best["value"]),
        "best_params": {} if best is None else {c[len(PARAM_PREFIX) :]: best[c] for c in param_columns(trials)},
        "base_number": int(base["number"].iloc[0]) if len(base) else None,
        "base_value": float(base["value"].iloc[0]) if len(base) else None,
        "nonfinite_numbers": [int(number) for number in nonfinite["number"]],
        "steps": int(trials["steps"].fillna(0).sum()),
        "tokens": int(trials["tokens"].fillna(0).sum()),
        "duration_s": float(trials["duration_s"].fillna(0).sum()),
    }


def pruning_savings(trials: pd.DataFrame, full_steps: int | None = None) -> dict:
    """Steps and tokens the pruned trials did not run, against each running full_steps; by default its own tuned
    trainer.max_steps where the study tunes it, else the longest trial's steps."""
    finished = trials[trials["state"].isin(FINISHED_STATES) & trials["steps"].notna()]
    pruned = finished[finished["state"] == "PRUNED"]
    steps_run = pruned["steps"].astype("int64")
    tuned = full_steps is None and TUNED_LENGTH in pruned.columns
    if full_steps is None:
        full_steps = int(finished["steps"].max()) if len(finished) else 0
    lengths = pd.Series(full_steps, index=pruned.index, dtype="float64")
    if tuned:  # a 1,000-step trial stopped at 100 saved 900, not the longest trial's rest
        lengths = pd.to_numeric(pruned[TUNED_LENGTH], errors="coerce").fillna(lengths)
    saved_steps = (lengths - steps_run).clip(lower=0).astype("int64")
    # Tokens a pruned trial would have seen: its own tokens per step (batch size differs between trials).
    per_step = pruned["tokens"].astype("Float64") / steps_run.where(steps_run > 0)
    saved_tokens = (per_step * saved_steps).fillna(0)
    spent_steps = int(finished["steps"].sum())
    return {
        "full_steps": full_steps,
        "n_pruned": len(pruned),
        "pruned_steps_run": int(steps_run.sum()),
        "steps_saved": int(saved_steps.sum()),
        "tokens_saved": int(round(float(saved_tokens.sum()))),
        "steps_spent": spent_steps,
        "saved_fraction": float(saved_steps.sum() / (spent_steps + saved_steps.sum())) if spent_steps else 0.0,
    }


def pareto_mask(trials: pd.DataFrame, *, direction: str, cost: str = "trainable_params") -> pd.Series:
    """True for ranked trials (best_first) no other beats on both value (in the direction) and cost (lower)."""
    ranked = best_first(trials, direction=direction)
    ranked = ranked[ranked[cost].notna()]
    sign = -1.0 if ascending(direction) else 1.0  # compare as "higher is better" after the sign flip
    values = sign * ranked["value"].to_numpy(dtype=float)
    costs = ranked[cost].astype("float64").to_numpy()
    better_or_equal = (values[None, :] >= values[:, None]) & (costs[None, :] <= costs[:, None])
    strictly = (values[None, :] > values[:, None]) | (costs[None, :] < costs[:, None])
    dominated = (better_or_equal & strictly).any(axis=1)  # row i: does some j dominate i
    mask = pd.Series(False, index=trials.index)
    mask.loc[ranked.index[~dominated]] = True
    return mask
