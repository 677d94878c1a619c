"""The benchmark table as the replay reads it: one learning curve per config and seed, its best and noise floor."""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from typing import Any, Literal

import pandas as pd

Config = tuple[Any, ...]  # one value per axis, in the table's axis order


@dataclasses.dataclass(frozen=True)
class Curve:
    """One recorded run: validation value at each step, and the training tokens seen by then."""

    steps: tuple[int, ...]
    tokens: tuple[int, ...]
    values: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class CurveTable:
    """A full-factorial grid of configs, each with one or more seeds' curves, and the direction of its metric."""

    axes: dict[str, tuple[Any, ...]]  # varying `fit` key -> its values, ascending
    curves: dict[Config, tuple[Curve, ...]]  # every point of the grid -> one curve per seed
    direction: Literal["maximize", "minimize"] = "maximize"

    def final(self, config: Config) -> float:
        """The config's final value, averaged over its seeds: what the replay counts as the truth of a config."""
        return statistics.fmean(curve.values[-1] for curve in self.curves[config])

    def best(self) -> Config:
        """The config with the best final mean value in the table's direction."""
        sign = 1 if self.direction == "maximize" else -1
        return max(self.curves, key=lambda config: sign * self.final(config))

    def noise_floor(self) -> float:
        """Standard deviation of one run's final value: pooled over the configs recorded with several seeds (else 0)."""
        variances = [
            statistics.variance([curve.values[-1] for curve in runs]) for runs in self.curves.values() if len(runs) > 1
        ]
        return math.sqrt(statistics.fmean(variances)) if variances else 0.0

    def target(self) -> float:
        """The value a search must reach to count as having found the best: the best within one noise floor."""
        best, noise = self.final(self.best()), self.noise_floor()
        return best - noise if self.direction == "maximize" else best + noise

    def reached(self, value: float) -> bool:
        """Whether a config's true value is at the target in the table's direction."""
        target = self.target()
        return value >= target - 1e-12 if self.direction == "maximize" else value <= target + 1e-12

    def full_steps(self) -> int:
        """Training steps of running every config of the grid once, to its end (the full grid's cost)."""
        return sum(runs[0].steps[-1] for runs in self.curves.values())


def from_frame(
    frame: pd.DataFrame,
    keys: tuple[str, ...],
    *,
    seed_key: str = "seed_everything",
    direction: Literal["maximize", "minimize"] = "maximize",
) -> CurveTable:
    """Build the table from long rows (keys, seed, step, tokens, value); refuse a grid with missing configs."""
    axes = {key: _plain(tuple(sorted(frame[key].unique()))) for key in keys if frame[key].nunique() > 1}
    if not axes:
        raise ValueError(f"the table varies none of {keys}; allowed: a table of at least two configs")
    curves: dict[Config, list[Curve]] = {}
    for group, rows in frame.groupby([*axes, seed_key], sort=True):
        rows = rows.sort_values("step")
        curve = Curve(tuple(rows.step.astype(int)), tuple(rows.tokens.astype(int)), tuple(rows.value.astype(float)))
        curves.setdefault(_plain(group[:-1]), []).append(curve)
    missing = [config for config in itertools.product(*axes.values()) if _plain(config) not in curves]
    if missing:
        raise ValueError(
            f"the table is not a full grid over {list(axes)}: {len(missing)} configs missing, e.g. {missing[:3]}; "
            "allowed: a full grid (record the missing stages, or pass --where to select a complete slice)"
        )
    return CurveTable(axes, {config: tuple(runs) for config, runs in curves.items()}, direction)


def _plain(values: tuple[Any, ...]) -> Config:
    return tuple(value.item() if hasattr(value, "item") else value for value in values)  # numpy -> Python scalars
