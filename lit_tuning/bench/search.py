"""Search-efficiency benchmark (`make bench-search`): replay strategies on the recorded table, compute to the best."""

from __future__ import annotations

import concurrent.futures
import functools
import math
import multiprocessing as mp
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from lit_tuning.bench.curves import CurveTable
from lit_tuning.bench.replay import Event, Replay, Strategy
from lit_tuning.bench.search_table import open_table, table_parser
from lit_tuning.commands import Count, listed, parse_or_exit
from lit_tuning.files import atomic_write

SAMPLING = ("random", "tpe", "gp", "qmc", "cmaes")
PRUNING = ("none", "median", "sha", "hyperband")
BRIEF_STEPS, TOP_K = 200, 3  # brief-then-top-k: every config 200 steps, then the best 3 to the end
# The strategies drawn in the figure: the original task's design, the grid, and the main contenders.
FIGURE_STRATEGIES = (
    "oat",
    "grid+none",
    "random+none",
    "tpe+none",
    "gp+none",
    "qmc+none",
    "cmaes+none",
    "tpe+sha",
    f"brief{BRIEF_STEPS}-top{TOP_K}",
)


def strategies() -> list[Strategy]:
    """Every strategy the benchmark compares: the original task's design, the grid and the samplers x pruners."""
    chosen = [Strategy("oat", "oat")]
    chosen += [Strategy(f"grid+{pruner}", "grid", pruner) for pruner in PRUNING]
    chosen += [Strategy(f"{sampler}+{pruner}", sampler, pruner) for sampler in SAMPLING for pruner in PRUNING]
    chosen += [
        Strategy(f"brief{BRIEF_STEPS}-top{TOP_K}", "grid", brief_steps=BRIEF_STEPS, top_k=TOP_K),
        Strategy(f"brief{BRIEF_STEPS}-top{TOP_K}-restart", "grid", brief_steps=BRIEF_STEPS, top_k=TOP_K,
                 from_checkpoint=False),
    ]  # fmt: skip
    return chosen


def replay_all(
    table: CurveTable, chosen: list[Strategy], seeds: int, budget_steps: int, workers: int = 1
) -> pd.DataFrame:
    """Replay each strategy with seeds 0..seeds-1; one row per finished trial (compute so far, incumbent's value).

    With `workers` > 1 the strategies run in that many processes; every replay is seeded, so the rows are the same.
    """
    replay = functools.partial(replay_strategy, table, seeds=seeds, budget_steps=budget_steps)
    if workers == 1:
        parts = map(replay, chosen)
    else:
        pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(chosen)), mp_context=mp.get_context("spawn"))
        with pool:
            parts = list(pool.map(replay, chosen))  # in the order of `chosen`, whichever process finished first
    rows = []
    for strategy, part in zip(chosen, parts, strict=True):
        rows += part
        print(f"replayed {strategy.name} x {seeds} seeds", file=sys.stderr)
    return pd.DataFrame(rows)


def replay_strategy(table: CurveTable, strategy: Strategy, *, seeds: int, budget_steps: int) -> list[dict]:
    """One strategy's rows over replay seeds 0..seeds-1."""
    warnings.filterwarnings("ignore", category=UserWarning, module="optuna")  # experimental-sampler notices
    return [
        {"strategy": strategy.name, "seed": seed, **_event_row(event)}
        for seed in range(seeds)
        for event in Replay(table, strategy, seed).run(budget_steps)
    ]


def _event_row(event: Event) -> dict:
    return {"trial": event.trial, "steps": event.steps, "tokens": event.tokens, "value": event.value}


def compute_to_target(events: pd.DataFrame, table: CurveTable) -> pd.DataFrame:
    """Per strategy and seed: the training steps and tokens spent when the incumbent first reached the target."""
    reached = events[events.value.notna() & events.value.map(lambda v: table.reached(v) if v == v else False)]
    first = reached.groupby(["strategy", "seed"], sort=False)[["steps", "tokens"]].min()
    every = events.groupby(["strategy", "seed"], sort=False).size().index
    return first.reindex(every).reset_index()  # NaN: this seed never got there within the budget


def summary(hits: pd.DataFrame, *, reference: tuple[str, str] = ("oat", "grid+none")) -> pd.DataFrame:
    """Median and quartiles of compute to the target per strategy (a miss counts as infinite), and ratios."""

    def quantile(values: pd.Series, q: float) -> float:
        return float(np.quantile(values.fillna(math.inf), q, method="inverted_cdf"))

    rows = []
    for name, group in hits.groupby("strategy", sort=False):
        rows.append({
            "strategy": name,
            "seeds": len(group),
            "reached": round(float(group.steps.notna().mean()), 3),
            "median_steps": quantile(group.steps, 0.5),
            "q25_steps": quantile(group.steps, 0.25),
            "q75_steps": quantile(group.steps, 0.75),
            "median_tokens": quantile(group.tokens, 0.5),
        })  # fmt: skip
    frame = pd.DataFrame(rows)
    for label in reference:
        if label in set(frame.strategy):
            base = float(frame.loc[frame.strategy == label, "median_steps"].iloc[0])
            frame[f"vs_{label}"] = frame.median_steps / base if math.isfinite(base) else math.nan
    return frame


def best_so_far(events: pd.DataFrame, budget_steps: int, points: int = 41) -> pd.DataFrame:
    """The data of the curves figure: per strategy, the incumbent's true value vs compute (median, 10th, 90th pct)."""
    grid = np.linspace(0, budget_steps, points)
    rows = []
    for (name, _seed), run in events.groupby(["strategy", "seed"], sort=False):
        run = run.sort_values("steps")
        index = np.searchsorted(run.steps.to_numpy(), grid, side="right") - 1
        values = np.where(index >= 0, run.value.to_numpy()[np.maximum(index, 0)], np.nan)
        rows += [{"strategy": name, "steps": x, "value": v} for x, v in zip(grid, values, strict=True)]
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["strategy", "steps"], sort=False).value
    return pd.DataFrame({
        "median": grouped.median(), "p10": grouped.quantile(0.1), "p90": grouped.quantile(0.9),
    }).reset_index()  # fmt: skip


def draw(curves: pd.DataFrame, table: CurveTable, names: list[str], path: Path) -> None:
    """Best-so-far vs training steps for the named strategies, with 10-90 % bands and the target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for name in names:
        part = curves[curves.strategy == name]
        axes.plot(part.steps, part["median"], label=name)
        axes.fill_between(part.steps, part.p10, part.p90, alpha=0.15)
    axes.axhline(table.target(), color="black", linestyle="--", linewidth=1, label="best - noise floor")
    axes.set(xlabel="training steps spent (all trials)", ylabel="true value of the incumbent config",
             title="Search efficiency on the benchmark table (median, 10-90 % of replay seeds)")  # fmt: skip
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Replay every strategy on the table; write the summary, the curves and their figure beside the table."""
    parser = table_parser("python -m lit_tuning.bench.search", __doc__)
    parser.add_argument("--seeds", type=Count, default=30, help="replay seeds per strategy (default 30)")
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--workers", type=Count, default=cores, help=f"replay processes (default: the {cores} cores)")
    parser.add_argument(
        "--strategies", type=list[str] | str | None, default=None, help="names to replay, as [a,b] (default: all)"
    )
    args = parse_or_exit(parser, argv)
    table = open_table(args)
    if table is None:
        return 2
    known = [s.name for s in strategies()]
    unknown = [name for name in listed(args.strategies or []) if name not in known]
    if unknown:
        print(f"--strategies {unknown}: unknown; allowed: {', '.join(known)}", file=sys.stderr)
        return 2
    chosen = [s for s in strategies() if not args.strategies or s.name in listed(args.strategies)]
    budget = table.full_steps()
    events = replay_all(table, chosen, args.seeds, budget, args.workers)
    table_summary = summary(compute_to_target(events, table))
    curves = best_so_far(events, budget)
    atomic_write(args.out / "replay_summary.csv", table_summary.to_csv(index=False))
    atomic_write(args.out / "replay_curves.csv", curves.to_csv(index=False))
    names = [name for name in FIGURE_STRATEGIES if name in set(curves.strategy)]
    draw(curves, table, names, args.out / "search_curves.png")
    best = dict(zip(table.axes, table.best(), strict=True))
    print(f"table: {len(table.curves)} configs over {list(table.axes)}, best {best} = {table.final(table.best()):.4f}, "
          f"noise floor {table.noise_floor():.4f}, full grid {budget} steps")  # fmt: skip
    print(table_summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
