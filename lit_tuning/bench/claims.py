"""Check the report's claims against the full table: variance shares, what a small study would claim, lr vs alpha/r."""

from __future__ import annotations

import itertools
import random
import sys

import numpy as np
import pandas as pd

from lit_tuning.analysis.figures import interaction_data
from lit_tuning.bench.curves import CurveTable
from lit_tuning.bench.search_table import open_table, table_parser
from lit_tuning.files import atomic_write
from lit_tuning.sweep.trial_record import PARAM_PREFIX


def finals(table: CurveTable) -> pd.DataFrame:
    """One row per config: its axis values and its seed-averaged final value."""
    return pd.DataFrame([{**dict(zip(table.axes, c, strict=True)), "value": table.final(c)} for c in table.curves])


def variance_shares(table: CurveTable) -> pd.DataFrame:
    """Exact two-way ANOVA of the full grid: the share of variance of each main effect and each pair's interaction."""
    frame = finals(table)
    grand, total = frame.value.mean(), float(((frame.value - frame.value.mean()) ** 2).sum())
    rows = []
    for key in table.axes:
        effect = frame.groupby(key).value.transform("mean") - grand
        rows.append({"term": key, "share": float((effect**2).sum() / total)})
    for a, b in itertools.combinations(table.axes, 2):
        cell = frame.groupby([a, b]).value.transform("mean")
        rest = frame.groupby(a).value.transform("mean") + frame.groupby(b).value.transform("mean") - grand
        rows.append({"term": f"{a} x {b}", "share": float(((cell - rest) ** 2).sum() / total)})
    return pd.DataFrame(rows).sort_values("share", ascending=False, ignore_index=True)


def small_study_interactions(table: CurveTable, *, trials: int = 24, draws: int = 200, seed: int = 0) -> pd.DataFrame:
    """What the report's interaction panel would name from studies of `trials` random runs (one seed's curve each)."""
    rng = random.Random(seed)
    configs = list(table.curves)
    named = []
    for _ in range(draws):
        rows = []
        for config in (rng.choice(configs) for _ in range(trials)):
            final = rng.choice(table.curves[config]).values[-1]
            params = {f"{PARAM_PREFIX}{key}": value for key, value in zip(table.axes, config, strict=True)}
            rows.append({"state": "COMPLETE", "value": final, **params})
        found = interaction_data(pd.DataFrame(rows))
        if found is not None:
            named.append({"term": f"{found[0]} x {found[1]}", "claimed_share": found[4]})
    shares = pd.DataFrame(named).groupby("term").claimed_share
    return pd.DataFrame({
        "named_in": shares.size() / draws,  # share of the small studies that name this pair
        "median": shares.median(), "p10": shares.quantile(0.1), "p90": shares.quantile(0.9),
    }).reset_index()  # fmt: skip


def learning_rate_fits(table: CurveTable) -> pd.DataFrame:
    """R^2 of linear fits of the final value: on log lr, on log(lr x alpha / r) (the effective step), and additive."""
    frame = finals(table)
    lr, alpha, rank = (np.log(frame[key].astype(float)) for key in ("model.learning_rate", "model.lora_alpha",
                                                                    "model.lora_r"))  # fmt: skip
    designs = {
        "log lr": [lr],
        "log(lr x alpha / r)": [lr + alpha - rank],
        "log lr + log alpha + log r": [lr, alpha, rank],
    }
    rows = []
    for name, columns in designs.items():
        x = np.column_stack([np.ones(len(frame)), *columns, *(c**2 for c in columns)])  # allow an optimum inside
        fitted = x @ np.linalg.lstsq(x, frame.value.to_numpy(), rcond=None)[0]
        residual = float(((frame.value - fitted) ** 2).sum())
        rows.append({"model": name, "r2": 1 - residual / float(((frame.value - frame.value.mean()) ** 2).sum())})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """Print and write the three checks for the recorded table."""
    args = table_parser(__doc__).parse_args(argv)
    table = open_table(args)
    if table is None:
        return 2
    sections = {
        "variance_shares": variance_shares(table),
        "small_study_interactions": small_study_interactions(table),
        "learning_rate_fits": learning_rate_fits(table) if {"model.lora_alpha", "model.lora_r"} <= set(table.axes)
        else pd.DataFrame(),
    }  # fmt: skip
    for name, frame in sections.items():
        atomic_write(args.out / f"claims_{name}.csv", frame.to_csv(index=False))
        print(f"\n{name}\n{frame.to_string(index=False, float_format=lambda v: f'{v:.3f}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
