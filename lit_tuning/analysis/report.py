"""`make report`: a study's figures, analysis tables and one self-contained HTML report (compute, draw, write)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from pathlib import Path

import optuna
import pandas as pd

from lit_tuning.analysis import figure_data as fd
from lit_tuning.analysis import figures as viz
from lit_tuning.analysis.html import figure_entries, render, report_context
from lit_tuning.analysis.mlflow_runs import mlflow_links
from lit_tuning.analysis.narrowing import write_space
from lit_tuning.analysis.report_data import ReportData, compute_report
from lit_tuning.analysis.tables import pruning_savings, study_summary, with_compute
from lit_tuning.commands import Count, add_study_options, command_parser, parse_or_exit
from lit_tuning.experiment.search_space import SearchSpaceError
from lit_tuning.files import atomic_write
from lit_tuning.mappings import plain
from lit_tuning.paths import DEFAULT_STORAGE, SPACES_DIR, sqlite_file, study_slug
from lit_tuning.paths import RESULTS_ROOT as ROOT
from lit_tuning.sweep.trial_record import latest_study_name, load_study, study_direction, trials_frame

MLFLOW_UI = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves


class ReportError(ValueError):
    """A report that cannot be made: the message names the study, file or key and what is allowed."""


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    """What one report run wrote."""

    html: Path
    figures: list[Path]
    data_dir: Path
    next_space: Path | None


def load_existing_study(study_name: str | None, storage: str) -> optuna.Study:
    """Load the named study (or the most recent one); never create a study or a missing SQLite file."""
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
    study = load_existing_study(study_name, storage)
    if not study.get_trials(deepcopy=False):
        raise ReportError(f"study {study.study_name!r} in {storage} has no trials yet; allowed: a study with a trial")
    data = compute_report(study, storage=storage, root=root, n_resamples=n_resamples)
    figures = draw_figures(data, root / "figures" / data.slug)
    data_dir = write_tables(data, root / "data" / data.slug)
    next_space, caveats = write_next_space(data, spaces_dir)
    context = report_context(
        data, figures=figures, links=mlflow_links(data.trials, mlflow_ui), next_space=next_space, caveats=caveats
    )
    html = atomic_write(root / "reports" / f"{data.slug}.html", render(context))
    return ReportPaths(html, figures, data_dir, next_space)


def draw_figures(data: ReportData, figure_dir: Path) -> list[Path]:
    """Compute each figure's data from the report data, draw it, and save it as <figure_dir>/<name>.png."""
    metric, direction = data.metric, data.direction
    drawn = {
        "history": viz.draw_history(fd.history_data(data.trials, data.curves, direction=direction, metric=metric),
                                    data.baselines),
        "importance": viz.draw_importance(fd.importance_data(data.importances)),
        "params": viz.draw_params(fd.params_data(data.trials, data.log_params, direction=direction, metric=metric),
                                  data.baselines),
        "interaction": viz.draw_interaction(data.interaction, data.interaction_why, metric),
        "curves": viz.draw_curves(fd.curves_data(data.curves, data.train_curves, metric=metric), data.baselines),
        "pareto": viz.draw_pareto(fd.pareto_data(data.trials, direction=direction, metric=metric), data.baselines),
        "pruning": viz.draw_pruning(fd.pruning_data(data.trials, data.savings)),
    }  # fmt: skip
    if data.confirmed is not None:
        confirm = fd.confirm_data(data.confirm, data.confirmed, metric=metric)
        drawn["confirm"] = viz.draw_confirm(confirm, data.baselines)
    return [viz.save_figure(figure, figure_dir / f"{name}.png") for name, figure in drawn.items()]


def write_tables(data: ReportData, data_dir: Path) -> Path:
    """The report's own tables beside the sweep's trials.csv and curves.csv, and summary.json."""
    _write_table(data.trials, data_dir / "report_trials.csv")
    _write_table(data.train_curves, data_dir / "train_curves.csv")
    _write_table(data.importances.table, data_dir / "importance.csv")
    if data.confirmed is not None:
        _write_table(data.confirmed, data_dir / "confirm_summary.csv")
    facts = {"summary": data.summary, "savings": data.savings, "baselines": data.baselines, "caveats": data.caveats}
    atomic_write(data_dir / "summary.json", json.dumps(facts, indent=1, default=_json_value) + "\n")
    return data_dir


def write_next_space(data: ReportData, spaces_dir: Path) -> tuple[Path | None, list[str]]:
    """Write the narrowed search space (if any) once the sweep would accept it; return it and the caveats."""
    if data.next_space is None:
        return None, data.caveats
    path = spaces_dir / f"{data.slug}-next.yaml"
    header = f"# Narrowed search space written by `python -m lit_tuning.analysis.report` from study {data.slug}.\n"
    try:
        write_space(data.next_space, path, header)
    except (SearchSpaceError, ValueError) as error:
        return None, [*data.caveats, f"No narrowed next search space: the sweep would refuse it ({error})."]
    return path, data.caveats


def _json_value(value: object) -> object:
    """JSON fallback: numpy scalars as Python numbers (experiment.config.plain), anything else as its text."""
    converted = plain(value)
    return str(converted) if converted is value else converted


def _write_table(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, frame.to_csv(index=False))


def build_comparison(study_names: list[str], *, storage: str = DEFAULT_STORAGE, root: Path = ROOT) -> Path:
    """One HTML page comparing studies: outcome counts, best and base values, compute, and best-so-far curves."""
    if len(study_names) < 2:
        raise ReportError(f"STUDIES = {study_names!r}; allowed: two or more study names")
    studies = [load_existing_study(name, storage) for name in study_names]
    directions = [study_direction(study) for study in studies]
    frames = [with_compute(trials_frame(s), direction=d) for s, d in zip(studies, directions)]
    metrics = sorted({study.user_attrs.get("metric", "objective") for study in studies})
    slug = "compare-" + "-".join(study_slug(study.study_name) for study in studies)
    figure = viz.draw_comparison(fd.comparison_data(frames, metric=" / ".join(metrics)))
    figure_path = viz.save_figure(figure, root / "figures" / slug / "comparison.png")
    rows = [
        {"study": study.study_name, "direction": direction, "summary": study_summary(frame, direction=direction),
         "savings": pruning_savings(frame), "unit": frame.attrs["compute_unit"], "compute": frame["compute"].sum()}
        for study, direction, frame in zip(studies, directions, frames)
    ]  # fmt: skip
    context = {
        "study": " vs ".join(study_names),
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "storage": storage,
        "comparison": rows,
        "figures": figure_entries([figure_path]),
        "compare_mode": True,
    }
    return atomic_write(root / "reports" / f"{slug}.html", render(context))


def main(argv: list[str] | None = None) -> int:
    """Command line: report one study (default: the most recent) or compare several."""
    parser = command_parser("python -m lit_tuning.analysis.report", __doc__)
    add_study_options(parser, study_help="study name (default: the study whose latest trial started last)")
    parser.add_argument("--compare", type=str, nargs="+", default=None, help="a comparison report of these studies")
    parser.add_argument("--root", type=Path, default=ROOT, help=f"results root (default {ROOT})")
    parser.add_argument("--spaces-dir", type=Path, default=SPACES_DIR, help="where the narrowed search space goes")
    parser.add_argument("--mlflow-ui", default=MLFLOW_UI, help=f"MLflow UI address for run links (default {MLFLOW_UI})")
    parser.add_argument("--resamples", type=Count, default=20, help="subsamples of the trials for importance intervals")
    args = parse_or_exit(parser, argv)
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
