"""How sure we are: mean ± 95% confidence interval per config and Welch's t-test between configs, over seeds."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pandas as pd
from scipy import stats

from lit_tuning.sweep.trial_record import ascending

CONFIDENCE = 0.95
ALPHA = 0.05  # two-sided significance level of the comparisons
BASE_LABEL = "base"  # the untuned base config in confirm.csv


@dataclasses.dataclass(frozen=True)
class Interval:
    """Mean of n samples with a Student-t confidence interval (low/high are NaN below two samples)."""

    n: int
    mean: float
    std: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Half the interval's width: the ± of mean ± CI."""
        return (self.high - self.low) / 2


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Welch's t-test of one config against another over seeds, and what it means in words."""

    first: str
    second: str
    mean_difference: float
    t_statistic: float
    p_value: float
    significant: bool
    verdict: str


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean ± Student-t interval: assumes the seeds' results are independent draws from a roughly normal spread."""
    series = pd.Series(values, dtype="float64").dropna()
    n = len(series)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(series.mean())
    if n < 2:
        return Interval(n, mean, math.nan, math.nan, math.nan)
    std = float(series.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, df=n - 1)) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def welch_test(
    first: Sequence[float], second: Sequence[float], *, direction: str, names: tuple[str, str] = ("a", "b")
) -> Comparison:
    """Welch's two-sided t-test (unequal variances) of first against second; NaN p-value below two samples each.

    The difference is first - second; which side is "better" follows the direction (lower is better when minimised).
    """
    a = pd.Series(first, dtype="float64").dropna()
    b = pd.Series(second, dtype="float64").dropna()
    difference = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        t_value, p_value = math.nan, math.nan
    elif a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        # Identical seeds on both sides: scipy returns NaN; the difference is then either exactly zero or certain.
        t_value, p_value = (math.nan, 1.0) if difference == 0 else (math.copysign(math.inf, difference), 0.0)
    else:
        result = stats.ttest_ind(a, b, equal_var=False)
        t_value, p_value = float(result.statistic), float(result.pvalue)
    significant = bool(p_value < ALPHA) if not math.isnan(p_value) else False
    if math.isnan(p_value):
        verdict = f"{names[0]} vs {names[1]}: too few seeds to test (need at least 2 each)"
    elif significant:
        better = names[0] if (difference < 0) == ascending(direction) else names[1]
        verdict = f"{better} is better: difference {difference:+.4f} is significant (Welch p = {p_value:.3g} < {ALPHA})"
    else:
        verdict = (
            f"{names[0]} and {names[1]} are statistically indistinguishable: difference {difference:+.4f}, "
            f"Welch p = {p_value:.3g} >= {ALPHA}"
        )
    return Comparison(names[0], names[1], difference, t_value, p_value, significant, verdict)


def confirm_summary(confirm: pd.DataFrame, *, direction: str) -> pd.DataFrame:
    """One row per config of a confirm table (config, seed, value): n, mean, std, ci_low, ci_high; best mean first."""
    rows = []
    for config, group in confirm.groupby("config", sort=False):
        interval = mean_ci(group["value"])
        rows.append({"config": config, **dataclasses.asdict(interval)})
    frame = pd.DataFrame(rows, columns=["config", "n", "mean", "std", "low", "high"])
    return frame.rename(columns={"low": "ci_low", "high": "ci_high"}).sort_values(
        "mean", ascending=ascending(direction), ignore_index=True, kind="stable"
    )


def confirm_comparisons(confirm: pd.DataFrame, *, direction: str, base_label: str = BASE_LABEL) -> list[Comparison]:
    """Best tuned config vs the runner-up and vs the base config (when present), by Welch's t-test."""
    summary = confirm_summary(confirm, direction=direction)
    tuned = summary[summary["config"] != base_label]
    if tuned.empty:
        return []
    samples = {config: group["value"] for config, group in confirm.groupby("config")}
    best = str(tuned["config"].iloc[0])
    comparisons = []
    if len(tuned) > 1:
        runner_up = str(tuned["config"].iloc[1])
        comparisons.append(welch_test(samples[best], samples[runner_up], direction=direction, names=(best, runner_up)))
    if base_label in samples:
        comparisons.append(
            welch_test(samples[best], samples[base_label], direction=direction, names=(best, base_label))
        )
    return comparisons
