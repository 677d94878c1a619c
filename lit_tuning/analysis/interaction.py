"""The strongest two-parameter interaction of a study, with the uncertainty that decides whether the report claims it.

A share of variance "beyond additive effects" read off cells of one or two trials is mostly noise, and picking the
largest of several pairs inflates it further. So the share comes with a bootstrap interval over trials, and a claim is
made only when every cell holds MIN_CELL_TRIALS trials and a permutation test of the largest share over all pairs (which
accounts for the picking) rejects "no interaction" at ALPHA.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd

from lit_tuning.sweep.trial_record import PARAM_PREFIX, best_first, param_columns

MAX_BINS = 3  # numeric parameters are cut into this many quantile bins
MIN_TRIALS = 4  # fewer completed trials than this cannot fill two levels of two parameters
MIN_CELL_TRIALS = 3  # a cell mean from fewer trials is one or two noisy runs: no claim rests on it
ALPHA = 0.05
N_PERMUTATIONS = 199
N_BOOTSTRAP = 200


@dataclasses.dataclass(frozen=True)
class Interaction:
    """The pair with the largest interaction share, its cell tables, its uncertainty and whether it is claimed."""

    a: str
    b: str
    means: pd.DataFrame  # mean value per cell (rows: bins of a, columns: bins of b)
    counts: pd.DataFrame  # trials per cell
    share: float  # variance of the cell means beyond row + column effects, as a share of total variance
    low: float  # 95% bootstrap interval of share (trials resampled with replacement)
    high: float
    p_value: float  # permutation test of the largest share over all pairs
    n_pairs: int
    min_cell: int

    @property
    def supported(self) -> bool:
        """True when the data can carry the claim: enough trials in every cell and a significant permutation test."""
        return self.min_cell >= MIN_CELL_TRIALS and self.p_value < ALPHA

    @property
    def verdict(self) -> str:
        """One sentence for the report: the claim with its uncertainty, or why it is withheld."""
        found = (
            f"{self.a} x {self.b}: {self.share:.0%} of variance beyond additive effects "
            f"(95% bootstrap interval {self.low:.0%}-{self.high:.0%}; permutation p = {self.p_value:.3f} "
            f"for the largest of {self.n_pairs} pair(s); smallest cell {self.min_cell} trial(s))"
        )
        if self.supported:
            return f"Interaction found: {found}."
        reasons = []
        if self.min_cell < MIN_CELL_TRIALS:
            reasons.append(f"a claim needs at least {MIN_CELL_TRIALS} trials in every cell")
        if self.p_value >= ALPHA:
            reasons.append(f"a share this large arises by chance (p >= {ALPHA})")
        return f"No interaction is claimed: the strongest pair is {found}, but {' and '.join(reasons)}."


def binned(series: pd.Series) -> pd.Series:
    """Labels in value order: quantile bins named by the smallest and largest value in them, else the values."""
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if numeric and series.nunique() > MAX_BINS + 1:
        bins = pd.qcut(series, MAX_BINS, duplicates="drop")
        low = series.groupby(bins, observed=True).transform("min")
        high = series.groupby(bins, observed=True).transform("max")
        labels = [f"{a:.3g} to {b:.3g}" for a, b in zip(low, high)]
        order = [label for _, label in sorted(set(zip(low, labels)))]
    else:
        labels = series.map(str).tolist()
        order = [str(value) for value in sorted(series.unique(), key=lambda v: (not numeric, v if numeric else str(v)))]
    return pd.Series(pd.Categorical(labels, categories=order, ordered=True), index=series.index)


def share(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    """Interaction sum of squares (cell - row - column + grand mean) over the total; NaN when there is no variance."""
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    grand = y.mean()
    total = float(((y - grand) ** 2).sum())
    if total <= 0:
        return float("nan")
    row = np.bincount(a, y, ka) / np.maximum(np.bincount(a, minlength=ka), 1)
    col = np.bincount(b, y, kb) / np.maximum(np.bincount(b, minlength=kb), 1)
    cell = a * kb + b
    cell_mean = np.bincount(cell, y, ka * kb) / np.maximum(np.bincount(cell, minlength=ka * kb), 1)
    return float(((cell_mean[cell] - row[a] - col[b] + grand) ** 2).sum() / total)


def interaction_data(trials: pd.DataFrame, *, direction: str, seed: int = 0) -> Interaction | None:
    """The parameter pair with the largest interaction share and its uncertainty; None when no pair can be formed."""
    ranked = best_first(trials, direction=direction)  # completed trials with finite values (the order is unused)
    pairs = {}
    for a, b in itertools.combinations(param_columns(trials), 2):
        data = ranked[[a, b, "value"]].dropna()
        if len(data) < MIN_TRIALS:
            continue
        data = data.assign(A=binned(data[a]), B=binned(data[b]))
        if data["A"].nunique() >= 2 and data["B"].nunique() >= 2:
            pairs[(a, b)] = data
    if not pairs:
        return None
    values = ranked["value"].to_numpy(float)
    # Per pair: the bin codes of both parameters and the rows (positions in `values`) where both are set.
    codes = {
        pair: (d["A"].cat.codes.to_numpy(), d["B"].cat.codes.to_numpy(), ranked.index.get_indexer(d.index))
        for pair, d in pairs.items()
    }
    shares = {pair: share(ca, cb, values[rows]) for pair, (ca, cb, rows) in codes.items()}
    (a, b), observed = max(shares.items(), key=lambda item: -1.0 if np.isnan(item[1]) else item[1])
    if np.isnan(observed):
        return None  # every completed value is the same: there is no variance to split
    rng = np.random.default_rng(seed)
    p_value = _permutation_p(codes, values, observed, rng)
    ca, cb, rows = codes[(a, b)]
    low, high = _bootstrap(ca, cb, values[rows], rng)
    data = pairs[(a, b)]
    means = data.pivot_table(index="A", columns="B", values="value", aggfunc="mean", observed=False)
    counts = data.pivot_table(index="A", columns="B", values="value", aggfunc="count", observed=False).fillna(0)
    name = {column: column.removeprefix(PARAM_PREFIX) for column in (a, b)}
    return Interaction(
        a=name[a], b=name[b], means=means, counts=counts.astype(int), share=observed, low=low, high=high,
        p_value=p_value, n_pairs=len(pairs), min_cell=int(counts.to_numpy().min()),
    )  # fmt: skip


def why_none(trials: pd.DataFrame, *, direction: str) -> str:
    """Why interaction_data found no pair: no variance at all, or too few trials over two varied parameters."""
    values = best_first(trials, direction=direction)["value"]
    if len(values) >= MIN_TRIALS and values.nunique() == 1:
        return f"every completed trial has the same value ({values.iloc[0]:.4g}): there is no variance to split"
    return f"no two parameters each took two values over at least {MIN_TRIALS} completed trials with a finite value"


def _permutation_p(codes: dict, values: np.ndarray, observed: float, rng: np.random.Generator) -> float:
    """Share of value relabellings whose largest share over all pairs reaches the observed largest share."""
    reached = 0
    for _ in range(N_PERMUTATIONS):
        shuffled = rng.permutation(values)
        largest = max(np.nan_to_num(share(ca, cb, shuffled[rows])) for ca, cb, rows in codes.values())
        reached += largest >= observed - 1e-12
    return (1 + reached) / (1 + N_PERMUTATIONS)


def _bootstrap(a: np.ndarray, b: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile interval of the pair's share over resamples of its trials (all-tied resamples skipped)."""
    draws = [rng.integers(0, len(y), len(y)) for _ in range(N_BOOTSTRAP)]
    shares = np.array([share(a[i], b[i], y[i]) for i in draws])
    shares = shares[~np.isnan(shares)]
    if not len(shares):
        return float("nan"), float("nan")
    return float(np.quantile(shares, 0.025)), float(np.quantile(shares, 0.975))
