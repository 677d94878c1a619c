"""Check the report's claims against the full table: variance shares, what a small study would claim, lr vs alpha/r,
and whether batch size matters."""

from __future__ import annotations

import itertools
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from lit_tuning.analysis.importance import param_importances, verdicts
from lit_tuning.analysis.interaction import interaction_data
from lit_tuning.analysis.narrowing import narrowed_space, write_space
from lit_tuning.bench.curves import CurveTable
from lit_tuning.bench.replay import Replay, Strategy
from lit_tuning.bench.search_table import BATCH_STUDIES, STAGES, load_table, open_table, table_parser
from lit_tuning.commands import parse_or_exit
from lit_tuning.experiment.config import read_yaml
from lit_tuning.experiment.search_space import same_value
from lit_tuning.files import atomic_write
from lit_tuning.sweep.trial_record import PARAM_PREFIX, trials_frame


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
        found = interaction_data(pd.DataFrame(rows).assign(number=range(len(rows))), direction=table.direction)
        if found is not None:
            named.append({"term": f"{found.a} x {found.b}", "claimed_share": found.share, "claimed": found.supported})
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


def narrowing_keeps_best(table: CurveTable, *, studies: int = 30, trials: int = 24) -> pd.DataFrame:
    """How often the report's narrowed next space, built from a replayed TPE + median study, still holds the best."""
    best = dict(zip(table.axes, table.best(), strict=True))
    with tempfile.TemporaryDirectory() as folder:
        document = read_yaml(STAGES[0])  # its base experiment; the parameters are the table's axes
        document["parameters"] = {key: {"candidates": list(values)} for key, values in table.axes.items()}
        space = write_space(document, Path(folder) / "table.yaml")
        rows = []
        for seed in range(studies):
            replay = Replay(table, Strategy("tpe+median", "tpe", "median"), seed)
            replay.run(budget_steps=trials * max(curve.steps[-1] for runs in table.curves.values() for curve in runs))
            frame = trials_frame(replay.study)
            for key, values in table.axes.items():  # the replay's parameters are indices into each axis
                frame[f"{PARAM_PREFIX}{key}"] = frame[f"{PARAM_PREFIX}{key}"].map(lambda index, v=values: v[index])
            try:
                verdict_table = verdicts(param_importances(replay.study).table)
            except RuntimeError as error:  # the report's importance step fails on this study: count it, do not hide it
                rows.append({"importance_failed": 1.0, "failure": str(error)})
                continue
            proposal, _ = narrowed_space(space, frame, verdict_table, study=f"replay-{seed}", direction=table.direction)
            kept = {key: _keeps(proposal, key, value) for key, value in best.items()}
            rows.append({**kept, "all": all(kept.values()), "importance_failed": 0.0})
    frame = pd.DataFrame(rows)
    if "failure" in frame:
        print(f"report importance failed on {frame.failure.notna().sum()} of {studies} studies: "
              f"{frame.failure.dropna().iloc[0]}", file=sys.stderr)  # fmt: skip
    shares = frame.drop(columns="failure", errors="ignore").astype(float).mean()  # of the studies the report survived
    return shares.rename("share_keeping_best").reset_index()


def _keeps(proposal: dict, key: str, value: object) -> bool:
    """Whether a proposed next space still allows `value` for `key` (among its candidates, or fixed to it)."""
    if key in proposal["parameters"]:
        return any(same_value(candidate, value) for candidate in proposal["parameters"][key]["candidates"])
    return same_value(proposal["base"]["overrides"].get(key), value)


def batch_size_effect(table: CurveTable) -> pd.DataFrame:
    """Per learning rate: the final value at each batch size (equal steps, so unequal tokens), and the best batch."""
    frame = finals(table).pivot(index="model.learning_rate", columns="data.batch_size", values="value")
    frame.columns = [f"batch_{batch}" for batch in frame.columns]
    frame["best_batch"] = [int(column.removeprefix("batch_")) for column in frame.idxmax(axis=1)]
    return frame.reset_index()


def batch_sections(path: Path) -> dict[str, pd.DataFrame]:
    """The batch-size checks on the batch stages' slice; none when the table has no complete lr x batch slice."""
    try:
        table = load_table(path, [], BATCH_STUDIES)
    except ValueError as error:
        print(f"batch size: not checked (stages {list(BATCH_STUDIES)}: {error})", file=sys.stderr)
        return {}
    if set(table.axes) != {"model.learning_rate", "data.batch_size"}:
        print(f"batch size: not checked (stages {list(BATCH_STUDIES)} vary {list(table.axes)})", file=sys.stderr)
        return {}
    return {"batch_size": batch_size_effect(table), "batch_size_variance_shares": variance_shares(table)}


def main(argv: list[str] | None = None) -> int:
    """Print and write the checks for the recorded table."""
    args = parse_or_exit(table_parser("python -m lit_tuning.bench.claims", __doc__), argv)
    table = open_table(args)
    if table is None:
        return 2
    sections = {
        "variance_shares": variance_shares(table),
        "small_study_interactions": small_study_interactions(table),
        "narrowing_keeps_best": narrowing_keeps_best(table),
        "learning_rate_fits": learning_rate_fits(table) if {"model.lora_alpha", "model.lora_r"} <= set(table.axes)
        else pd.DataFrame(),
        **batch_sections(args.table),
    }  # fmt: skip
    for name, frame in sections.items():
        atomic_write(args.out / f"claims_{name}.csv", frame.to_csv(index=False))
        print(f"\n{name}\n{frame.to_string(index=False, float_format=lambda v: f'{v:.3g}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
