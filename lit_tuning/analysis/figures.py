"""Seaborn figures of a study: each figure's data is computed by a function of the tidy tables, then drawn."""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from lit_tuning.analysis.tables import pareto_mask, with_compute  # noqa: E402
from lit_tuning.sweep.trial_record import PARAM_PREFIX, param_columns

STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "RUNNING": "#7f7f7f"}
BASELINE_STYLES = {
    "baseline/chance": ("chance (1/26)", ":"),
    "baseline/best_constant_per_position": ("best constant letter per position", "--"),
    "base_config": ("untuned base config", "-."),
}
METRIC_LABEL = "val letter-position accuracy"
MAX_BINS = 3  # numeric parameters are cut into this many quantile bins for the interaction heatmap


def save_figure(figure: plt.Figure, path: Path) -> Path:
    """Write a figure as PNG via a temporary file and a rename, then close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(descriptor)
    try:
        figure.savefig(temporary, dpi=110, bbox_inches="tight")
        os.chmod(temporary, 0o644)  # mkstemp makes owner-only files; figures are meant to be shared
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
        plt.close(figure)
    return path


def _baseline_lines(axis: plt.Axes, baselines: dict[str, float]) -> None:
    for key, value in baselines.items():
        if key in BASELINE_STYLES and value is not None and math.isfinite(value):
            label, style = BASELINE_STYLES[key]
            axis.axhline(value, color="0.35", linestyle=style, linewidth=1, label=f"{label}: {value:.3f}")


def last_reported(curves: pd.DataFrame) -> pd.DataFrame:
    """The last reported step and value of each trial's objective curve (where a pruned trial stopped)."""
    if curves.empty:
        return pd.DataFrame(columns=["number", "step", "value"])
    ordered = curves.sort_values(["number", "step"])
    return ordered.groupby("number", as_index=False).last()[["number", "step", "value"]]


def plot_history(trials: pd.DataFrame, curves: pd.DataFrame, baselines: dict[str, float], path: Path) -> Path:
    """Value and best-so-far against trial number and against cumulative training compute."""
    frame = with_compute(trials)
    unit = frame.attrs["compute_unit"]
    stopped = last_reported(curves).rename(columns={"value": "last_value"})
    frame = frame.merge(stopped[["number", "last_value"]], on="number", how="left")
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for axis, x, label in (
        (axes[0], "number", "trial number"),
        (axes[1], "cumulative_compute", f"cumulative training {unit}"),
    ):
        complete = frame[frame["state"] == "COMPLETE"]
        pruned = frame[frame["state"] == "PRUNED"]
        axis.scatter(complete[x], complete["value"], color=STATE_COLORS["COMPLETE"], label="completed trial", zorder=3)
        axis.scatter(
            pruned[x], pruned["last_value"], color=STATE_COLORS["PRUNED"], marker="x", label="pruned (last report)"
        )
        axis.step(frame[x], frame["best_so_far"], where="post", color="black", label="best so far")
        _baseline_lines(axis, baselines)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(METRIC_LABEL)
    axes[1].legend(loc="best", fontsize=8)
    figure.suptitle("Optimisation history")
    return save_figure(figure, path)


def plot_importance(importances: pd.DataFrame, path: Path) -> Path:
    """Normalized importance per parameter and evaluator with its 95% bootstrap interval as error bars."""
    figure, axis = plt.subplots(figsize=(8, 0.6 + 0.55 * max(1, importances["param"].nunique())))
    if importances.empty:
        axis.text(0.5, 0.5, "too few completed trials for importance", ha="center", va="center")
        axis.set_axis_off()
        return save_figure(figure, path)
    order = (
        importances.groupby("param")["importance"].mean().sort_values(ascending=False).index.tolist()
    )  # most important first
    evaluators = sorted(importances["evaluator"].unique())
    height = 0.8 / len(evaluators)
    for offset, evaluator in enumerate(evaluators):
        rows = importances[importances["evaluator"] == evaluator].set_index("param").reindex(order)
        y = np.arange(len(order)) + offset * height
        error = np.vstack(
            [(rows["importance"] - rows["low"]).clip(lower=0), (rows["high"] - rows["importance"]).clip(lower=0)]
        )
        axis.barh(y, rows["importance"], height=height, xerr=error, capsize=3, label=evaluator, alpha=0.85)
    axis.set_yticks(np.arange(len(order)) + height * (len(evaluators) - 1) / 2, order)
    axis.invert_yaxis()
    axis.set_xlabel("normalized importance (share of total; error bar: 95% bootstrap interval)")
    axis.set_xlim(0, 1.05)
    axis.legend(title="evaluator")
    axis.set_title("Hyperparameter importance")
    return save_figure(figure, path)


def plot_params(trials: pd.DataFrame, log_params: set[str], baselines: dict[str, float], path: Path) -> Path:
    """One panel per parameter: value of each completed trial against the parameter (log axis where the space is)."""
    columns = param_columns(trials)
    complete = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()]
    count = max(1, len(columns))
    ncols = min(3, count)
    nrows = math.ceil(count / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), sharey=True, squeeze=False)
    for axis, column in zip(axes.flat, columns):
        key = column[len(PARAM_PREFIX) :]
        data = complete[[column, "value"]].dropna()
        numeric = pd.api.types.is_numeric_dtype(data[column]) and not pd.api.types.is_bool_dtype(data[column])
        if numeric and data[column].nunique() > 4:
            sns.scatterplot(data=data, x=column, y="value", ax=axis, color=STATE_COLORS["COMPLETE"])
            if key in log_params:
                axis.set_xscale("log")
        else:
            data = data.assign(**{column: data[column].map(str)})
            sns.stripplot(data=data, x=column, y="value", ax=axis, color=STATE_COLORS["COMPLETE"], size=6, jitter=0.15)
        _baseline_lines(axis, baselines)
        axis.set_xlabel(f"{key}{' (log scale)' if key in log_params else ''}")
        axis.set_ylabel(METRIC_LABEL)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(columns) :]:
        axis.set_axis_off()
    if columns:
        axes.flat[0].legend(fontsize=7, loc="best")
    figure.suptitle("Value against each hyperparameter (completed trials)")
    return save_figure(figure, path)


def _binned(series: pd.Series) -> pd.Series:
    """Labels in value order: quantile bins named by the smallest and largest value in them, else the values."""
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if numeric and series.nunique() > MAX_BINS + 1:
        bins = pd.qcut(series, MAX_BINS, duplicates="drop")
        low, high = (
            series.groupby(bins, observed=True).transform("min"),
            series.groupby(bins, observed=True).transform("max"),
        )
        labels = [f"{a:.3g} to {b:.3g}" for a, b in zip(low, high)]
        order = [label for _, label in sorted(set(zip(low, labels)))]
    else:
        labels = series.map(str).tolist()
        order = [str(value) for value in sorted(series.unique(), key=lambda v: (not numeric, v if numeric else str(v)))]
    return pd.Series(pd.Categorical(labels, categories=order, ordered=True), index=series.index)


def interaction_data(trials: pd.DataFrame) -> tuple[str, str, pd.DataFrame, pd.DataFrame, float] | None:
    """The parameter pair with the largest interaction share of variance: (a, b, mean table, count table, share)."""
    complete = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()]
    best = None
    for a, b in itertools.combinations(param_columns(trials), 2):
        data = complete[[a, b, "value"]].dropna()
        if len(data) < 4:
            continue
        data = data.assign(A=_binned(data[a]), B=_binned(data[b]))
        if data["A"].nunique() < 2 or data["B"].nunique() < 2:
            continue
        # Two-way ANOVA: the cell means' deviation from an additive (row + column) model, as a share of total variance.
        grand = data["value"].mean()
        row_mean = data.groupby("A", observed=True)["value"].transform("mean")
        col_mean = data.groupby("B", observed=True)["value"].transform("mean")
        cell_mean = data.groupby(["A", "B"], observed=True)["value"].transform("mean")
        total = float(((data["value"] - grand) ** 2).sum())
        share = float(((cell_mean - row_mean - col_mean + grand) ** 2).sum() / total) if total > 0 else 0.0
        if best is None or share > best[4]:
            means = data.pivot_table(index="A", columns="B", values="value", aggfunc="mean", observed=False)
            counts = data.pivot_table(index="A", columns="B", values="value", aggfunc="count", observed=False)
            best = (a[len(PARAM_PREFIX) :], b[len(PARAM_PREFIX) :], means, counts, share)
    return best


def plot_interaction(trials: pd.DataFrame, path: Path) -> Path:
    """Heatmap of mean value over the cells of the most interacting parameter pair (cell text: mean and trial count)."""
    found = interaction_data(trials)
    figure, axis = plt.subplots(figsize=(6.5, 4.8))
    if found is None:
        axis.text(0.5, 0.5, "fewer than two varied parameters with enough completed trials", ha="center", va="center")
        axis.set_axis_off()
        return save_figure(figure, path)
    a, b, means, counts, share = found
    labels = means.map(lambda v: "" if pd.isna(v) else f"{v:.3f}") + counts.map(
        lambda n: "" if pd.isna(n) else f"\nn={int(n)}"
    )
    sns.heatmap(means, annot=labels, fmt="", cmap="viridis", ax=axis, cbar_kws={"label": f"mean {METRIC_LABEL}"})
    axis.set_ylabel(a)
    axis.set_xlabel(b)
    axis.set_title(f"Strongest interaction: {a} x {b} ({share:.0%} of variance beyond additive effects)")
    return save_figure(figure, path)


def plot_curves(
    curves: pd.DataFrame, baselines: dict[str, float], path: Path, train_curves: pd.DataFrame | None = None
) -> Path:
    """Learning curves of all trials; a pruned trial ends in an x where it stopped."""
    panels = 2 if train_curves is not None and not train_curves.empty else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    axis = axes[0][0]
    for number, group in curves.sort_values("step").groupby("number"):
        state = group["state"].iloc[0]
        color = STATE_COLORS.get(state, "0.5")
        axis.plot(group["step"], group["value"], color=color, alpha=0.7, linewidth=1)
        if state == "PRUNED":
            axis.scatter(group["step"].iloc[-1], group["value"].iloc[-1], color=color, marker="x", s=40, zorder=3)
    handles = [
        plt.Line2D([], [], color=c, label=s.lower()) for s, c in STATE_COLORS.items() if s in set(curves["state"])
    ]
    handles.append(plt.Line2D([], [], color=STATE_COLORS["PRUNED"], marker="x", linestyle="", label="where pruned"))
    _baseline_lines(axis, baselines)
    axis.legend(handles=handles + axis.get_legend_handles_labels()[0], fontsize=7, loc="best")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(METRIC_LABEL)
    axis.set_title("Validation curves")
    axis.grid(alpha=0.3)
    if panels == 2:
        axis = axes[0][1]
        for number, group in train_curves.sort_values("step").groupby("number"):
            axis.plot(group["step"], group["value"], color=STATE_COLORS.get(group["state"].iloc[0], "0.5"), alpha=0.5)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("train loss (nats)")
        axis.set_yscale("log")
        axis.set_title("Training loss (MLflow history)")
        axis.grid(alpha=0.3)
    return save_figure(figure, path)


def plot_pareto(trials: pd.DataFrame, baselines: dict[str, float], path: Path) -> Path:
    """Value against trainable parameters, the Pareto front (fewest parameters for the accuracy) joined by a line."""
    complete = trials[(trials["state"] == "COMPLETE") & trials["value"].notna() & trials["trainable_params"].notna()]
    front = complete[pareto_mask(trials).loc[complete.index]].sort_values("trainable_params")
    figure, axis = plt.subplots(figsize=(7, 4.5))
    axis.scatter(
        complete["trainable_params"].astype(float),
        complete["value"],
        color=STATE_COLORS["COMPLETE"],
        alpha=0.6,
        label="completed trial",
    )
    axis.plot(front["trainable_params"].astype(float), front["value"], color="black", marker="o", label="Pareto front")
    _baseline_lines(axis, baselines)
    if len(complete) and complete["trainable_params"].nunique() > 1:
        axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (LoRA adapters, log scale)")
    axis.set_ylabel(METRIC_LABEL)
    axis.set_title("Accuracy against adapter size")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def plot_pruning(trials: pd.DataFrame, savings: dict, path: Path) -> Path:
    """Steps each trial ran, and for pruned trials the steps pruning saved up to the full run."""
    frame = trials[trials["steps"].notna()].sort_values("number")
    figure, axis = plt.subplots(figsize=(max(6, 0.35 * len(frame) + 2), 4))
    x = np.arange(len(frame))
    steps = frame["steps"].astype(float).to_numpy()
    colors = [STATE_COLORS.get(state, "0.5") for state in frame["state"]]
    axis.bar(x, steps, color=colors)
    saved = np.where(frame["state"] == "PRUNED", np.clip(savings["full_steps"] - steps, 0, None), 0)
    axis.bar(
        x, saved, bottom=steps, color="none", edgecolor=STATE_COLORS["PRUNED"], hatch="//", label="saved by pruning"
    )
    axis.set_xticks(x, frame["number"].astype(str), fontsize=7)
    axis.set_xlabel("trial number")
    axis.set_ylabel("optimizer steps")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=c, label=s.lower())
        for s, c in STATE_COLORS.items()
        if s in set(frame["state"])
    ]
    axis.legend(
        handles=handles + axis.get_legend_handles_labels()[0], fontsize=8, loc="upper left", bbox_to_anchor=(1, 1)
    )
    axis.set_title(
        f"Compute saved by pruning: {savings['steps_saved']:,} of {savings['steps_saved'] + savings['steps_spent']:,} "
        f"steps ({savings['saved_fraction']:.0%})"
    )
    return save_figure(figure, path)


def plot_confirm(confirm: pd.DataFrame, summary: pd.DataFrame, baselines: dict[str, float], path: Path) -> Path:
    """Each confirmed config's seeds as points and its mean ± 95% CI as an error bar."""
    order = summary["config"].tolist()
    figure, axis = plt.subplots(figsize=(7, 0.8 + 0.7 * len(order)))
    sns.stripplot(data=confirm, y="config", x="value", order=order, ax=axis, color="0.4", size=5, jitter=0.1)
    y = np.arange(len(order))
    error = np.vstack([summary["mean"] - summary["ci_low"], summary["ci_high"] - summary["mean"]]).astype(float)
    axis.errorbar(
        summary["mean"], y, xerr=np.nan_to_num(error), fmt="D", color="black", capsize=4, label="mean ± 95% CI"
    )
    for key, value in baselines.items():
        if key in BASELINE_STYLES and value is not None:
            label, style = BASELINE_STYLES[key]
            axis.axvline(value, color="0.35", linestyle=style, linewidth=1, label=f"{label}: {value:.3f}")
    axis.set_xlabel(f"{METRIC_LABEL} (one point per seed)")
    axis.set_ylabel("config")
    axis.legend(fontsize=7, loc="best")
    axis.set_title("Re-runs over seeds")
    axis.grid(alpha=0.3, axis="x")
    return save_figure(figure, path)


def plot_comparison(frames: list[pd.DataFrame], path: Path) -> Path:
    """Best-so-far of several studies against cumulative compute (frames from analysis.with_compute)."""
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for frame in frames:
        axis.step(frame["cumulative_compute"], frame["best_so_far"], where="post", label=str(frame["study"].iloc[0]))
    units = {frame.attrs.get("compute_unit", "tokens") for frame in frames}
    axis.set_xlabel(f"cumulative training {' / '.join(sorted(units))}")
    axis.set_ylabel(f"best {METRIC_LABEL} so far")
    axis.set_title("Studies compared")
    axis.legend(title="study", fontsize=8)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)
