"""`make report`: a study's figures, analysis tables and one self-contained HTML report."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import importlib.resources
import json
import math
import sys
from pathlib import Path
from typing import Any

import jinja2
import optuna
import pandas as pd

from lit_tuning.analysis import figures as viz
from lit_tuning.analysis.importance import Recommendation, narrowed_space, param_importances, verdicts, write_space
from lit_tuning.analysis.significance import confirm_comparisons, confirm_summary
from lit_tuning.analysis.tables import (
    mlflow_baselines,
    mlflow_curves,
    pareto_mask,
    pruning_savings,
    study_summary,
    with_compute,
)
from lit_tuning.commands import Count, add_study_options, command_parser, parse_or_exit
from lit_tuning.experiment.search_space import SearchSpace, SearchSpaceError, load_search_space
from lit_tuning.files import atomic_write
from lit_tuning.paths import DEFAULT_STORAGE, SPACES_DIR, sqlite_file, study_slug
from lit_tuning.paths import RESULTS_ROOT as ROOT
from lit_tuning.sweep.trial_record import curves_frame, latest_study_name, load_study, param_columns, trials_frame
from lit_tuning.train.metrics import PRIMARY_METRIC, chance_accuracy

MLFLOW_UI = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves
TEMPLATE = "report.html.j2"


class ReportError(ValueError):
    """A report that cannot be made: the message names the study, file or key and what is allowed."""


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    """What one report run wrote."""

    html: Path
    figures: list[Path]
    data_dir: Path
    next_space: Path | None


def open_study(study_name: str | None, storage: str) -> optuna.Study:
    """Load the named study (or the most recent one), refusing a missing SQLite file instead of creating it."""
    try:
        database = sqlite_file(storage)
    except ValueError as error:
        raise ReportError(f"--storage {error}; allowed: sqlite:///path/to/file.db or postgresql://...") from None
    if database is not None and not database.is_file():
        raise ReportError(f"Optuna storage {storage}: file {database} does not exist")
    names = sorted(summary.study_name for summary in optuna.get_all_study_summaries(storage))
    if study_name is None:
        try:
            study_name = latest_study_name(storage)
        except ValueError as error:
            raise ReportError(str(error)) from None
    if study_name not in names:
        raise ReportError(f"study {study_name!r} is not in {storage}; allowed: {', '.join(names) or '(no studies)'}")
    return load_study(study_name, storage)


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


def baselines_for(trials: pd.DataFrame, space: SearchSpace | None) -> dict[str, float]:
    """The reference accuracies: from the trials' MLflow runs, else recomputed from the space's data config."""
    found = mlflow_baselines(trials)
    if found:
        return found
    if space is not None:
        from lit_tuning.train.data import SpellingDataModule  # the word split only: no tokenizer or model is loaded

        data = space.resolved_base.to_dict()["data"]
        return SpellingDataModule(**data).baselines("val")
    return {"baseline/chance": chance_accuracy()}


def log_params(study: optuna.Study) -> set[str]:
    """Parameters sampled on a log scale (from the trials' Optuna distributions)."""
    return {
        name
        for trial in study.get_trials(deepcopy=False)
        for name, distribution in trial.distributions.items()
        if getattr(distribution, "log", False)
    }


def mlflow_links(trials: pd.DataFrame, ui: str) -> dict[int, str]:
    """Trial number -> the MLflow UI address of its run (needs the run's experiment id from its store)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    links = {}
    for trial in trials[trials["mlflow_run_id"].notna() & trials["mlflow_tracking_uri"].notna()].itertuples():
        try:
            run = MlflowClient(tracking_uri=str(trial.mlflow_tracking_uri)).get_run(str(trial.mlflow_run_id))
        except MlflowException:
            continue
        links[int(trial.number)] = f"{ui.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return links


def embed_png(path: Path) -> str:
    """A data: URI of a PNG, so that the report opens offline from disk with no files beside it."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render(context: dict[str, Any]) -> str:
    """Render the HTML template beside this module; every value is HTML-escaped unless marked safe."""
    text = importlib.resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters["num"] = _number
    return environment.from_string(text).render(**context)


def _plain(value: Any) -> Any:
    """JSON fallback: numpy scalars as Python numbers (not their text), anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 0.01 else f"{value:.{digits}f}"  # learning rates keep their digits
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def build_report(
    study_name: str | None,
    *,
    storage: str = DEFAULT_STORAGE,
    root: Path = ROOT,
    spaces_dir: Path = SPACES_DIR,
    mlflow_ui: str = MLFLOW_UI,
    n_resamples: int = 20,
) -> ReportPaths:
    """Analyse a study and write its tables, figures, next search space and HTML report."""
    study = open_study(study_name, storage)
    name, slug = study.study_name, study_slug(study.study_name)
    trials = trials_frame(study)
    if trials.empty:
        raise ReportError(f"study {name!r} in {storage} has no trials yet; allowed: a study with at least one trial")
    curves = curves_frame(study, study.user_attrs.get("metric", PRIMARY_METRIC))
    train_curves = mlflow_curves(trials)
    space = study_space(study)
    baselines = baselines_for(trials, space)
    summary = study_summary(trials)
    full_steps = None
    if space is not None and "trainer.max_steps" not in space.parameters:
        full_steps = int(space.resolved_base["trainer.max_steps"])
    savings = pruning_savings(trials, full_steps)
    importances = param_importances(study, n_resamples=n_resamples)
    verdict_table = verdicts(importances)
    data_dir, figure_dir = root / "data" / slug, root / "figures" / slug
    confirm_path = data_dir / "confirm.csv"
    confirm = pd.read_csv(confirm_path) if confirm_path.is_file() else None
    confirmed = confirm_summary(confirm) if confirm is not None and len(confirm) else None
    comparisons = confirm_comparisons(confirm) if confirmed is not None else []

    figures = [
        viz.plot_history(trials, curves, baselines, figure_dir / "history.png"),
        viz.plot_importance(importances, figure_dir / "importance.png"),
        viz.plot_params(trials, log_params(study), baselines, figure_dir / "params.png"),
        viz.plot_interaction(trials, figure_dir / "interaction.png"),
        viz.plot_curves(curves, baselines, figure_dir / "curves.png", train_curves),
        viz.plot_pareto(trials, baselines, figure_dir / "pareto.png"),
        viz.plot_pruning(trials, savings, figure_dir / "pruning.png"),
    ]
    if confirmed is not None:
        figures.append(viz.plot_confirm(confirm, confirmed, baselines, figure_dir / "confirm.png"))

    # trials.csv and curves.csv beside these are the sweep's; the report's own tables have their own names.
    _write_table(with_compute(trials).assign(pareto=pareto_mask(trials)), data_dir / "report_trials.csv")
    _write_table(train_curves, data_dir / "train_curves.csv")
    _write_table(importances, data_dir / "importance.csv")
    if confirmed is not None:
        _write_table(confirmed, data_dir / "confirm_summary.csv")

    next_space, notes = None, []
    if space is not None and not verdict_table.empty:
        document, notes = narrowed_space(space, trials, verdict_table, study=name)
        next_space = spaces_dir / f"{slug}-next.yaml"
        header = f"# Narrowed search space written by `python -m lit_tuning.analysis.report` from study {slug}.\n"
        write_space(document, next_space, header)
    recommended = _recommended(name, summary, confirmed, root / "configs" / slug)
    facts = {"summary": summary, "savings": savings, "baselines": baselines, "next_space": str(next_space or "")}
    atomic_write(data_dir / "summary.json", json.dumps(facts, indent=1, default=_plain) + "\n")

    html = render(
        {
            "study": name,
            "generated": datetime.datetime.now().isoformat(timespec="seconds"),
            "storage": storage,
            "metric": study.user_attrs.get("metric", PRIMARY_METRIC),
            "strategy": study.user_attrs.get("strategy", space.strategy if space else "?"),
            "pruner": study.user_attrs.get("pruner", space.pruner if space else "?"),
            "summary": summary,
            "savings": savings,
            "compute_unit": with_compute(trials).attrs["compute_unit"],
            "baselines": baselines,
            "figures": [{"name": path.stem, "src": embed_png(path)} for path in figures],
            "columns": ["number", "state", "value", "steps", "tokens", "duration_s", *param_columns(trials), "reason"],
            "trials": trials.to_dict("records"),
            "links": mlflow_links(trials, mlflow_ui),
            "verdicts": verdict_table.to_dict("records"),
            "confirmed": None if confirmed is None else confirmed.to_dict("records"),
            "comparisons": comparisons,
            "indistinguishable": any(not c.significant for c in comparisons[:1]),
            "recommendations": notes,
            "recommended": recommended,
            "next_space": str(next_space) if next_space else None,
            "space_path": space.path if space else None,
        }
    )
    path = atomic_write(root / "reports" / f"{slug}.html", html)
    return ReportPaths(path, figures, data_dir, next_space)


def _recommended(name: str, summary: dict, confirmed: pd.DataFrame | None, configs_dir: Path) -> Recommendation:
    """The config to use now, with its expected accuracy: confirmed mean ± CI where re-run, else the single trial."""
    best_file = configs_dir / "best.yaml"
    where = f"`python -m lit_tuning fit --config configs/base.yaml --config {best_file}`"
    tuned = None if confirmed is None else confirmed[confirmed["config"] != "base"]
    if tuned is not None and len(tuned):
        row = tuned.iloc[0]
        ci = f"{row['mean']:.4f} (95% CI {row['ci_low']:.4f}-{row['ci_high']:.4f}, {int(row['n'])} seeds)"
        config = row["config"]
        config_file = best_file if config == "best" else configs_dir / f"{config}.yaml"
        return Recommendation(
            f"Use {config_file}: expected accuracy {ci}",
            f"highest mean over seeds in `make confirm STUDY={name}`; replay it with "
            f"`python -m lit_tuning fit --config configs/base.yaml --config {config_file}`",
        )
    if summary["best_value"] is None:
        return Recommendation("No recommendation yet", "the study has no completed trial")
    return Recommendation(
        f"Use trial {summary['best_number']} ({best_file}): {summary['best_value']:.4f} from a single seed",
        f"best completed trial; no confidence interval until `make confirm STUDY={name}` re-runs it over seeds; "
        f"{where}",
    )


def _write_table(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, frame.to_csv(index=False))


def build_comparison(study_names: list[str], *, storage: str = DEFAULT_STORAGE, root: Path = ROOT) -> Path:
    """One HTML page comparing studies: outcome counts, best and base values, compute, and best-so-far curves."""
    if len(study_names) < 2:
        raise ReportError(f"STUDIES = {study_names!r}; allowed: two or more study names")
    studies = [open_study(name, storage) for name in study_names]
    frames = [with_compute(trials_frame(study)) for study in studies]
    slug = "compare-" + "-".join(study_slug(study.study_name) for study in studies)
    figure_path = viz.plot_comparison(frames, root / "figures" / slug / "comparison.png")
    rows = []
    for study, frame in zip(studies, frames):
        summary = study_summary(frame)
        rows.append({"study": study.study_name, "summary": summary, "savings": pruning_savings(frame),
                     "unit": frame.attrs["compute_unit"], "compute": float(frame["compute"].sum())})  # fmt: skip
    html = render(
        {
            "study": " vs ".join(study_names),
            "generated": datetime.datetime.now().isoformat(timespec="seconds"),
            "storage": storage,
            "comparison": rows,
            "figures": [{"name": "comparison", "src": embed_png(figure_path)}],
        }
        | {"compare_mode": True}
    )
    return atomic_write(root / "reports" / f"{slug}.html", html)


def main(argv: list[str] | None = None) -> int:
    """Command line: report one study (default: the most recent) or compare several."""
    parser = command_parser("python -m lit_tuning.analysis.report", __doc__)
    add_study_options(parser, study_help="study name (default: the study whose latest trial started last)")
    parser.add_argument("--compare", type=str, nargs="+", default=None, help="a comparison report of these studies")
    parser.add_argument("--root", type=Path, default=ROOT, help=f"results root (default {ROOT})")
    parser.add_argument("--spaces-dir", type=Path, default=SPACES_DIR, help="where the narrowed search space goes")
    parser.add_argument("--mlflow-ui", default=MLFLOW_UI, help=f"MLflow UI address for run links (default {MLFLOW_UI})")
    parser.add_argument("--resamples", type=Count, default=20, help="bootstrap resamples for importance intervals")
    args = parse_or_exit(parser, sys.argv[1:] if argv is None else argv)
    try:
        if args.compare:
            print(build_comparison(args.compare, storage=args.storage, root=args.root))
            return 0
        paths = build_report(
            args.study,
            storage=args.storage,
            root=args.root,
            spaces_dir=args.spaces_dir,
            mlflow_ui=args.mlflow_ui,
            n_resamples=args.resamples,
        )
    except (ReportError, SearchSpaceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {paths.html}\nfigures: {paths.figures[0].parent}\ntables: {paths.data_dir}")
    if paths.next_space:
        print(f"next search space: {paths.next_space}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
