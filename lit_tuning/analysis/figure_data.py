"""The data behind each report figure, computed from the tidy tables: small typed records that tests check by value."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from lit_tuning.analysis.importance import Importances
from lit_tuning.analysis.tables import pareto_mask, with_compute
from lit_tuning.sweep.trial_record import PARAM_PREFIX, best_first, param_columns


@dataclasses.dataclass(frozen=True)
class HistoryData:
    """Per trial: number, cumulative compute, state, value (ranked trials), last report (pruned), best so far."""

    points: pd.DataFrame
    unit: str
    metric: str
    direction: str


@dataclasses.dataclass(frozen=True)
class ImportanceData:
    """Importance rows in plot order (most important first), the evaluators, or why there are none."""

    table: pd.DataFrame
    order: list[str]
    evaluators: list[str]
    reason: str | None


@dataclasses.dataclass(frozen=True)
class ParamPanel:
    """One parameter's panel: (x, value) of ranked trials, drawn as a scatter when numeric with > 4 values."""

    key: str
    points: pd.DataFrame
    scatter: bool
    log: bool


@dataclasses.dataclass(frozen=True)
class ParamsData:
    """One panel per parameter."""

    panels: list[ParamPanel]
    metric: str


@dataclasses.dataclass(frozen=True)
class CurvesData:
    """Finite validation reports per trial, where each pruned trial stopped, and MLflow training-loss curves."""

    validation: pd.DataFrame
    stops: pd.DataFrame
    train: pd.DataFrame
    metric: str


@dataclasses.dataclass(frozen=True)
class ParetoData:
    """Ranked trials by (trainable_params, value) and the Pareto front among them, cheapest first."""

    points: pd.DataFrame
    front: pd.DataFrame
    metric: str
    direction: str


@dataclasses.dataclass(frozen=True)
class PruningData:
    """Per trial with known steps: number, state, steps run, steps saved by pruning; and the study's totals."""

    bars: pd.DataFrame
    savings: dict


@dataclasses.dataclass(frozen=True)
class ConfirmData:
    """Each seed's value per config, and each config's mean with its 95% interval, best first."""

    seeds: pd.DataFrame
    summary: pd.DataFrame
    metric: str


@dataclasses.dataclass(frozen=True)
class ComparisonData:
    """Best-so-far against cumulative compute, one line per study."""

    lines: list[tuple[str, np.ndarray, np.ndarray]]
    units: list[str]
    metric: str


def last_reported(curves: pd.DataFrame) -> pd.DataFrame:
    """The last finite reported step and value of each trial's objective curve (where a pruned trial stopped)."""
    finite = curves[np.isfinite(curves["value"].astype("float64"))]
    if finite.empty:
        return pd.DataFrame(columns=["number", "step", "value"])
    ordered = finite.sort_values(["number", "step"])
    return ordered.groupby("number", as_index=False).last()[["number", "step", "value"]]


def history_data(trials: pd.DataFrame, curves: pd.DataFrame, *, direction: str, metric: str) -> HistoryData:
    """Value and best so far (in the direction) against trial number and cumulative compute."""
    frame = with_compute(trials, direction=direction)
    unit = frame.attrs["compute_unit"]  # merge below drops a frame's attrs
    ranked = frame.index.isin(best_first(frame, direction=direction).index)
    stopped = last_reported(curves).rename(columns={"value": "last_value"})
    frame = frame.assign(value=frame["value"].where(ranked)).merge(stopped[["number", "last_value"]], how="left")
    frame["last_value"] = frame["last_value"].where(frame["state"] == "PRUNED")
    columns = ["number", "cumulative_compute", "state", "value", "last_value", "best_so_far"]
    return HistoryData(frame[columns], unit, metric, direction)


def importance_data(importances: Importances) -> ImportanceData:
    """Importance rows ordered by mean importance over evaluators; the reason when none could be computed."""
    table = importances.table
    if table.empty:
        return ImportanceData(table, [], [], "; ".join(importances.notes) or "no importance computed")
    order = table.groupby("param")["importance"].mean().sort_values(ascending=False).index.tolist()
    return ImportanceData(table, order, sorted(table["evaluator"].unique()), None)


def params_data(trials: pd.DataFrame, log_params: set[str], *, direction: str, metric: str) -> ParamsData:
    """Per parameter, the ranked (completed, finite) trials' parameter value and objective value."""
    ranked = best_first(trials, direction=direction)
    panels = []
    for column in param_columns(trials):
        key = column.removeprefix(PARAM_PREFIX)
        points = ranked[[column, "value"]].dropna().rename(columns={column: "x"})
        numeric = pd.api.types.is_numeric_dtype(points["x"]) and not pd.api.types.is_bool_dtype(points["x"])
        scatter = bool(numeric and points["x"].nunique() > 4)
        if not scatter:  # categories in value order (seaborn orders them as they first appear)
            points = points.sort_values("x", key=lambda x: x if numeric else x.map(str), kind="stable")
            points = points.assign(x=points["x"].map(str))
        panels.append(ParamPanel(key, points.reset_index(drop=True), scatter, scatter and key in log_params))
    return ParamsData(panels, metric)


def curves_data(curves: pd.DataFrame, train_curves: pd.DataFrame, *, metric: str) -> CurvesData:
    """Finite points of each validation curve, the last point of each pruned trial, and the training-loss curves."""
    validation = curves[np.isfinite(curves["value"].astype("float64"))].sort_values(["number", "step"])
    pruned = set(validation.loc[validation["state"] == "PRUNED", "number"])
    stops = last_reported(validation)
    stops = stops[stops["number"].isin(pruned)].reset_index(drop=True)
    return CurvesData(validation.reset_index(drop=True), stops, train_curves, metric)


def pareto_data(trials: pd.DataFrame, *, direction: str, metric: str) -> ParetoData:
    """Ranked trials with a parameter count, and the front (in the direction), cheapest first."""
    ranked = best_first(trials, direction=direction)
    points = ranked[ranked["trainable_params"].notna()][["number", "trainable_params", "value"]]
    points = points.astype({"trainable_params": "float64"})
    front = points[pareto_mask(trials, direction=direction).loc[points.index]].sort_values("trainable_params")
    return ParetoData(points.reset_index(drop=True), front.reset_index(drop=True), metric, direction)


def pruning_data(trials: pd.DataFrame, savings: dict) -> PruningData:
    """Steps each trial ran and, for pruned trials, the steps up to the full run that pruning saved."""
    frame = trials[trials["steps"].notna()].sort_values("number")
    steps = frame["steps"].astype("float64")
    saved = (savings["full_steps"] - steps).clip(lower=0).where(frame["state"] == "PRUNED", 0.0)
    bars = pd.DataFrame({"number": frame["number"], "state": frame["state"], "steps": steps, "saved": saved})
    return PruningData(bars.reset_index(drop=True), savings)


def confirm_data(confirm: pd.DataFrame, summary: pd.DataFrame, *, metric: str) -> ConfirmData:
    """Seeds per config and the summary (already best first in the study's direction)."""
    seeds = confirm[np.isfinite(confirm["value"].astype("float64"))][["config", "seed", "value"]]
    return ConfirmData(seeds.reset_index(drop=True), summary.reset_index(drop=True), metric)


def comparison_data(frames: list[pd.DataFrame], *, metric: str) -> ComparisonData:
    """Best-so-far lines of studies (frames from tables.with_compute, each ranked in its own direction)."""
    lines = [
        (str(frame["study"].iloc[0]), frame["cumulative_compute"].to_numpy(float), frame["best_so_far"].to_numpy(float))
        for frame in frames
        if len(frame)
    ]
    units = sorted({frame.attrs.get("compute_unit", "tokens") for frame in frames})
    return ComparisonData(lines, units, metric)
