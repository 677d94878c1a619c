"""The compute step of `make report`: everything the report shows, computed once from a study into one record."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import optuna
import pandas as pd

from lit_tuning.analysis.importance import Importances, param_importances, verdicts
from lit_tuning.analysis.interaction import Interaction, interaction_data, why_none
from lit_tuning.analysis.mlflow_runs import mlflow_baselines, mlflow_curves
from lit_tuning.analysis.narrowing import Recommendation, narrowed_space
from lit_tuning.analysis.significance import Comparison, confirm_comparisons, confirm_summary
from lit_tuning.analysis.tables import pareto_mask, pruning_savings, study_summary, with_compute
from lit_tuning.experiment.search_space import SearchSpace, SearchSpaceError, load_search_space
from lit_tuning.paths import study_slug
from lit_tuning.sweep.trial_record import curves_frame, study_direction, trials_frame
from lit_tuning.train.metrics import PRIMARY_METRIC, chance_accuracy


@dataclasses.dataclass(frozen=True)
class ReportData:
    """One study's report: its facts, tables and statistics, and a sentence for each statistic it cannot support."""

    study: str
    slug: str
    storage: str
    metric: str
    direction: str
    strategy: str
    pruner: str
    space: SearchSpace | None
    trials: pd.DataFrame  # the trials table with compute, best so far and the pareto flag
    curves: pd.DataFrame
    train_curves: pd.DataFrame
    baselines: dict[str, float]
    log_params: set[str]
    summary: dict
    savings: dict
    importances: Importances
    verdicts: pd.DataFrame
    interaction: Interaction | None
    interaction_why: str  # why there is no interaction (empty when there is one)
    confirm: pd.DataFrame | None
    confirmed: pd.DataFrame | None
    comparisons: list[Comparison]
    next_space: dict | None  # the narrowed search-space document, None when there is no basis for one
    recommendations: list[Recommendation]
    recommended: Recommendation
    caveats: list[str]


def compute_report(study: optuna.Study, *, storage: str, root: Path, n_resamples: int) -> ReportData:
    """Read the study (and its MLflow runs and confirm.csv), and compute every table and statistic of its report."""
    name, slug = study.study_name, study_slug(study.study_name)
    direction, metric = study_direction(study), study.user_attrs.get("metric", PRIMARY_METRIC)
    trials, space = trials_frame(study), study_space(study)
    summary = study_summary(trials, direction=direction)
    importances = param_importances(study, n_resamples=n_resamples)
    verdict_table = verdicts(importances.table)
    confirm, confirmed, comparisons = confirmation(root / "data" / slug, direction=direction)
    next_space, notes = None, []
    if space is not None and not verdict_table.empty:
        next_space, notes = narrowed_space(space, trials, verdict_table, study=name, direction=direction)
    full_steps = None  # savings count up to the space's fixed training length, else each trial's tuned one
    if space is not None and "trainer.max_steps" not in space.parameters:
        full_steps = int(space.resolved_base["trainer.max_steps"])
    interaction = interaction_data(trials, direction=direction)
    table = with_compute(trials, direction=direction).assign(pareto=pareto_mask(trials, direction=direction))
    data = ReportData(
        study=name, slug=slug, storage=storage, metric=metric, direction=direction,
        strategy=study.user_attrs.get("strategy", space.strategy if space else "?"),
        pruner=study.user_attrs.get("pruner", space.pruner if space else "?"),
        space=space, trials=table, curves=curves_frame(study, metric), train_curves=mlflow_curves(trials),
        baselines=baselines_for(trials, space, metric), log_params=log_params(study), summary=summary,
        savings=pruning_savings(trials, full_steps), importances=importances, verdicts=verdict_table,
        interaction=interaction, interaction_why="" if interaction else why_none(trials, direction=direction),
        confirm=confirm, confirmed=confirmed,
        comparisons=comparisons, next_space=next_space, recommendations=notes,
        recommended=recommended(name, summary, confirmed, metric, root / "configs" / slug), caveats=[],
    )  # fmt: skip
    return dataclasses.replace(data, caveats=caveats(data))


def study_space(study: optuna.Study) -> SearchSpace | None:
    """The search space the study ran, from its `search_space` user attribute; None when unset or gone."""
    path = study.user_attrs.get("search_space")
    if not path or not Path(path).is_file():
        return None
    try:
        return load_search_space(path)
    except SearchSpaceError as error:
        print(f"warning: search space of study {study.study_name!r} no longer loads: {error}", file=sys.stderr)
        return None


def baselines_for(trials: pd.DataFrame, space: SearchSpace | None, metric: str) -> dict[str, float]:
    """The reference accuracies (from the trials' MLflow runs, else the space's data); none for another metric."""
    if metric != PRIMARY_METRIC:
        return {}  # chance and best-constant accuracies mean nothing on another metric's axis
    found = mlflow_baselines(trials)
    if found:
        return found
    if space is not None:
        from lit_tuning.train.data import SpellingDataModule  # the word split only: no tokenizer or model is loaded

        return SpellingDataModule(**space.resolved_base.to_dict()["data"]).baselines("val")
    return {"baseline/chance": chance_accuracy()}


def log_params(study: optuna.Study) -> set[str]:
    """Parameters sampled on a log scale (from the trials' Optuna distributions)."""
    return {
        name
        for trial in study.get_trials(deepcopy=False)
        for name, distribution in trial.distributions.items()
        if getattr(distribution, "log", False)
    }


def confirmation(
    data_dir: Path, *, direction: str
) -> tuple[pd.DataFrame | None, pd.DataFrame | None, list[Comparison]]:
    """confirm.csv (written by `make confirm`), its per-config summary and the Welch comparisons; None when absent."""
    path = data_dir / "confirm.csv"
    confirm = pd.read_csv(path) if path.is_file() else None
    if confirm is None or confirm.empty:
        return None, None, []
    return confirm, confirm_summary(confirm, direction=direction), confirm_comparisons(confirm, direction=direction)


def recommended(
    name: str, summary: dict, confirmed: pd.DataFrame | None, metric: str, configs_dir: Path
) -> Recommendation:
    """The config to use now, with its expected value: confirmed mean ± CI where re-run, else the single trial."""
    best_file = configs_dir / "best.yaml"
    tuned = None if confirmed is None else confirmed[confirmed["config"] != "base"]
    if tuned is not None and len(tuned):
        row = tuned.iloc[0]
        ci = f"{row['mean']:.4f} (95% CI {row['ci_low']:.4f}-{row['ci_high']:.4f}, {int(row['n'])} seeds)"
        config_file = best_file if row["config"] == "best" else configs_dir / f"{row['config']}.yaml"
        return Recommendation(
            f"Use {config_file}: expected {metric} {ci}",
            f"best mean over seeds in `make confirm STUDY={name}`; replay it with "
            f"`python -m lit_tuning fit --config configs/base.yaml --config {config_file}`",
        )
    if summary["best_value"] is None:
        return Recommendation("No recommendation yet", "the study has no completed trial with a finite value")
    return Recommendation(
        f"Use trial {summary['best_number']} ({best_file}): {metric} {summary['best_value']:.4f} from a single seed",
        f"best completed trial; no confidence interval until `make confirm STUDY={name}` re-runs it over seeds; "
        f"`python -m lit_tuning fit --config configs/base.yaml --config {best_file}`",
    )


def caveats(data: ReportData) -> list[str]:
    """One sentence per statistic the study cannot support, saying why (shown in the report's caveats list)."""
    summary, found = data.summary, []
    complete = summary["counts"]["COMPLETE"]
    if summary["best_value"] is None:
        found.append(
            f"No completed trial with a finite value ({complete} completed, {summary['counts']['PRUNED']} pruned, "
            f"{summary['counts']['FAIL']} failed): there is no best value, ranking, Pareto front or next space."
        )
    elif complete - len(summary["nonfinite_numbers"]) == 1:
        found.append("Only one completed trial: its value has nothing to be compared with.")
    if summary["nonfinite_numbers"]:
        numbers = ", ".join(str(number) for number in summary["nonfinite_numbers"])
        found.append(
            f"Trial(s) {numbers} completed with a non-finite value (±inf): left out of the best, the rankings, "
            "the importance, the interaction and the figures."
        )
    found += [f"Importance: {note}." for note in data.importances.notes]
    if data.interaction is None:
        found.append(f"Interaction: not estimated: {data.interaction_why}.")
    elif not data.interaction.supported:
        found.append(data.interaction.verdict)
    if not data.baselines:
        found.append(
            f"Reference accuracies (chance, best constant letter) are not drawn: the objective is {data.metric}."
        )
    if data.next_space is None:
        why = "the study's search-space file is unknown" if data.space is None else "no importance could be estimated"
        found.append(f"No narrowed next search space: {why}.")
    return found
