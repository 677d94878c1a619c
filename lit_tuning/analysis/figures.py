"""Draw the report's figures from figure_data records with seaborn/matplotlib; each draw_* returns the Figure."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from lit_tuning.analysis import figure_data as fd  # noqa: E402
from lit_tuning.analysis.interaction import Interaction  # noqa: E402
from lit_tuning.sweep.trial_record import ascending  # noqa: E402

STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "RUNNING": "#7f7f7f"}
BASELINE_STYLES = {
    "baseline/chance": ("chance (1/26)", ":"),
    "baseline/best_constant_per_position": ("best constant letter per position", "--"),
    "base_config": ("untuned base config", "-."),
}


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


def label(metric: str, direction: str | None = None) -> str:
    """An axis label: the metric, and which way is better where the figure ranks."""
    return metric if direction is None else f"{metric} ({'lower' if ascending(direction) else 'higher'} is better)"


def _nothing(title: str, why: str, size: tuple[float, float] = (7, 3)) -> plt.Figure:
    """A figure that says why it is empty, so the report never shows a blank or misleading plot."""
    figure, axis = plt.subplots(figsize=size)
    axis.text(0.5, 0.5, why, ha="center", va="center", wrap=True)
    axis.set_axis_off()
    axis.set_title(title)
    return figure


def _baseline_lines(axis: plt.Axes, baselines: dict[str, float], *, vertical: bool = False) -> None:
    for key, value in baselines.items():
        if key in BASELINE_STYLES and value is not None and math.isfinite(value):
            text, style = BASELINE_STYLES[key]
            line = axis.axvline if vertical else axis.axhline
            line(value, color="0.35", linestyle=style, linewidth=1, label=f"{text}: {value:.3f}")


def draw_history(data: fd.HistoryData, baselines: dict[str, float]) -> plt.Figure:
    """Value and best-so-far against trial number and against cumulative training compute."""
    points = data.points
    if points["value"].notna().sum() + points["last_value"].notna().sum() == 0:
        return _nothing("Optimisation history", "no trial reported a finite value")
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for axis, x, text in (
        (axes[0], "number", "trial number"),
        (axes[1], "cumulative_compute", f"training {data.unit}"),
    ):
        done = points[points["value"].notna()]
        pruned = points[points["last_value"].notna()]
        axis.scatter(done[x], done["value"], color=STATE_COLORS["COMPLETE"], label="completed trial", zorder=3)
        axis.scatter(pruned[x], pruned["last_value"], color=STATE_COLORS["PRUNED"], marker="x", label="pruned (last)")
        axis.step(points[x], points["best_so_far"], where="post", color="black", label="best so far")
        _baseline_lines(axis, baselines)
        axis.set_xlabel(text if x == "number" else f"cumulative {text}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(label(data.metric, data.direction))
    axes[1].legend(loc="best", fontsize=8)
    figure.suptitle("Optimisation history")
    return figure


def draw_importance(data: fd.ImportanceData) -> plt.Figure:
    """Normalized importance per parameter and evaluator with its 95% jackknife interval as error bars."""
    if data.reason is not None:
        return _nothing("Hyperparameter importance", f"not computed: {data.reason}")
    figure, axis = plt.subplots(figsize=(8, 0.6 + 0.55 * len(data.order)))
    height = 0.8 / len(data.evaluators)
    for offset, evaluator in enumerate(data.evaluators):
        rows = data.table[data.table["evaluator"] == evaluator].set_index("param").reindex(data.order)
        y = np.arange(len(data.order)) + offset * height
        below = (rows["importance"] - rows["low"]).clip(lower=0).fillna(0)
        above = (rows["high"] - rows["importance"]).clip(lower=0).fillna(0)
        axis.barh(y, rows["importance"], height=height, xerr=np.vstack([below, above]), capsize=3, label=evaluator)
    axis.set_yticks(np.arange(len(data.order)) + height * (len(data.evaluators) - 1) / 2, data.order)
    axis.invert_yaxis()
    axis.set_xlabel("normalized importance (share of total; error bar: 95% interval)")
    axis.set_xlim(0, 1.05)
    axis.legend(title="evaluator")
    axis.set_title("Hyperparameter importance")
    return figure


def draw_params(data: fd.ParamsData, baselines: dict[str, float]) -> plt.Figure:
    """One panel per parameter: value of each ranked trial against the parameter (log axis where the space is)."""
    if not data.panels or all(panel.points.empty for panel in data.panels):
        return _nothing("Value against each hyperparameter", "no completed trial with a finite value")
    ncols = min(3, len(data.panels))
    nrows = math.ceil(len(data.panels) / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), sharey=True, squeeze=False)
    for axis, panel in zip(axes.flat, data.panels):
        color = STATE_COLORS["COMPLETE"]
        if panel.scatter:
            sns.scatterplot(data=panel.points, x="x", y="value", ax=axis, color=color)
            axis.set_xscale("log" if panel.log else "linear")
        else:
            sns.stripplot(data=panel.points, x="x", y="value", ax=axis, color=color, size=6, jitter=0.15)
        _baseline_lines(axis, baselines)
        axis.set_xlabel(f"{panel.key}{' (log scale)' if panel.log else ''}")
        axis.set_ylabel(data.metric)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(data.panels) :]:
        axis.set_axis_off()
    if baselines:
        axes.flat[0].legend(fontsize=7, loc="best")
    figure.suptitle("Value against each hyperparameter (completed trials)")
    return figure


def draw_interaction(found: Interaction | None, why_none: str, metric: str) -> plt.Figure:
    """Heatmap of mean value over the cells of the most interacting pair (cell text: mean and trial count)."""
    if found is None:
        return _nothing("Strongest interaction", why_none)
    figure, axis = plt.subplots(figsize=(6.5, 4.8))
    text = found.means.map(lambda v: "" if v != v else f"{v:.3f}") + found.counts.map(lambda n: f"\nn={int(n)}")
    sns.heatmap(found.means, annot=text, fmt="", cmap="viridis", ax=axis, cbar_kws={"label": f"mean {metric}"})
    axis.set_ylabel(found.a)
    axis.set_xlabel(found.b)
    claim = "claimed" if found.supported else "not claimed: too little data"
    axis.set_title(
        f"Strongest pair: {found.a} x {found.b}\n{found.share:.0%} of variance beyond additive effects "
        f"(95% CI {found.low:.0%}-{found.high:.0%}, p = {found.p_value:.2f}; {claim})",
        fontsize=9,
    )
    return figure


def draw_curves(data: fd.CurvesData, baselines: dict[str, float]) -> plt.Figure:
    """Learning curves of all trials; a pruned trial ends in an x where it stopped; training loss beside them."""
    if data.validation.empty:
        return _nothing("Validation curves", "no trial reported a finite intermediate value")
    panels = 2 if not data.train.empty else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    axis = axes[0][0]
    for _, group in data.validation.groupby("number"):
        color = STATE_COLORS.get(group["state"].iloc[0], "0.5")
        axis.plot(group["step"], group["value"], color=color, alpha=0.7, linewidth=1)
    axis.scatter(data.stops["step"], data.stops["value"], color=STATE_COLORS["PRUNED"], marker="x", s=40, zorder=3)
    states = set(data.validation["state"])
    handles = [plt.Line2D([], [], color=c, label=s.lower()) for s, c in STATE_COLORS.items() if s in states]
    if not data.stops.empty:  # a study without pruning gets no legend entry for marks it does not have
        handles.append(plt.Line2D([], [], color=STATE_COLORS["PRUNED"], marker="x", linestyle="", label="where pruned"))
    _baseline_lines(axis, baselines)
    axis.legend(handles=handles + axis.get_legend_handles_labels()[0], fontsize=7, loc="best")
    axis.set(xlabel="optimizer step", ylabel=data.metric, title="Validation curves")
    axis.grid(alpha=0.3)
    if panels == 2:
        axis = axes[0][1]
        for _, group in data.train.sort_values("step").groupby("number"):
            axis.plot(group["step"], group["value"], color=STATE_COLORS.get(group["state"].iloc[0], "0.5"), alpha=0.5)
        axis.set(xlabel="optimizer step", ylabel="train loss (nats)", yscale="log", title="Training loss (MLflow)")
        axis.grid(alpha=0.3)
    return figure


def draw_pareto(data: fd.ParetoData, baselines: dict[str, float]) -> plt.Figure:
    """Value against trainable parameters, the Pareto front (fewest parameters for the value) joined by a line."""
    if data.points.empty:
        return _nothing("Value against adapter size", "no completed trial with a finite value and a parameter count")
    figure, axis = plt.subplots(figsize=(7, 4.5))
    points, front = data.points, data.front
    axis.scatter(points["trainable_params"], points["value"], color=STATE_COLORS["COMPLETE"], alpha=0.6, label="trial")
    axis.plot(front["trainable_params"], front["value"], color="black", marker="o", label="Pareto front")
    _baseline_lines(axis, baselines)
    if points["trainable_params"].nunique() > 1:
        axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (LoRA adapters, log scale)")
    axis.set_ylabel(label(data.metric, data.direction))
    axis.set_title("Value against adapter size")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def draw_pruning(data: fd.PruningData) -> plt.Figure:
    """Steps each trial ran, and for pruned trials the steps pruning saved up to the full run."""
    bars, savings = data.bars, data.savings
    if bars.empty:
        return _nothing("Compute saved by pruning", "no trial recorded its steps")
    figure, axis = plt.subplots(figsize=(max(6, 0.35 * len(bars) + 2), 4))
    x = np.arange(len(bars))
    axis.bar(x, bars["steps"], color=[STATE_COLORS.get(state, "0.5") for state in bars["state"]])
    axis.bar(x, bars["saved"], bottom=bars["steps"], color="none", edgecolor=STATE_COLORS["PRUNED"], hatch="//",
             label="saved by pruning")  # fmt: skip
    axis.set_xticks(x, bars["number"].astype(str), fontsize=7)
    axis.set(xlabel="trial number", ylabel="optimizer steps")
    states = set(bars["state"])
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, label=s.lower()) for s, c in STATE_COLORS.items() if s in states]
    axis.legend(handles=handles + axis.get_legend_handles_labels()[0], fontsize=8, loc="upper left",
                bbox_to_anchor=(1, 1))  # fmt: skip
    total = savings["steps_saved"] + savings["steps_spent"]
    axis.set_title(
        f"Compute saved by pruning: {savings['steps_saved']:,} of {total:,} steps ({savings['saved_fraction']:.0%})"
    )
    return figure


def draw_confirm(data: fd.ConfirmData, baselines: dict[str, float]) -> plt.Figure:
    """Each confirmed config's seeds as points and its mean ± 95% CI as an error bar."""
    order = data.summary["config"].tolist()
    figure, axis = plt.subplots(figsize=(7, 0.8 + 0.7 * len(order)))
    sns.stripplot(data=data.seeds, y="config", x="value", order=order, ax=axis, color="0.4", size=5, jitter=0.1)
    summary = data.summary
    error = np.vstack([summary["mean"] - summary["ci_low"], summary["ci_high"] - summary["mean"]]).astype(float)
    axis.errorbar(summary["mean"], np.arange(len(order)), xerr=np.nan_to_num(error), fmt="D", color="black",
                  capsize=4, label="mean ± 95% CI")  # fmt: skip
    _baseline_lines(axis, baselines, vertical=True)
    axis.set(xlabel=f"{data.metric} (one point per seed)", ylabel="config", title="Re-runs over seeds")
    axis.legend(fontsize=7, loc="best")
    axis.grid(alpha=0.3, axis="x")
    return figure


def draw_comparison(data: fd.ComparisonData) -> plt.Figure:
    """Best-so-far of several studies against cumulative compute."""
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for study, x, best in data.lines:
        axis.step(x, best, where="post", label=study)
    axis.set_xlabel(f"cumulative training {' / '.join(data.units)}")
    axis.set_ylabel(f"best {data.metric} so far")
    axis.set_title("Studies compared")
    axis.legend(title="study", fontsize=8)
    axis.grid(alpha=0.3)
    return figure
