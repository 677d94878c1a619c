"""Record the search benchmark's table: learning curves of a fixed set of configs, run by the real sweep, resumably."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import yaml
from jsonargparse import ArgumentParser, Namespace

from lit_tuning.bench.curves import CurveTable, from_frame
from lit_tuning.commands import Count, command_parser, listed, parse_or_exit
from lit_tuning.experiment.search_space import SearchSpace, SearchSpaceError, load_search_space
from lit_tuning.files import atomic_write
from lit_tuning.paths import RESULTS_ROOT
from lit_tuning.sweep.trial_record import load_study

BENCH_DIR = Path("benchmarks/search")  # committed: the stage spaces and the recorded table
STAGES = tuple(sorted((BENCH_DIR / "spaces").glob("*.yaml")))  # recorded in file-name order
TABLE = BENCH_DIR / "table.csv"
RECORD_ROOT = RESULTS_ROOT.parent / "bench-search"  # runs, trackers and the Optuna storage of the recording
RECORD_STORAGE = f"sqlite:///{(RECORD_ROOT / 'optuna.db').as_posix()}"
# What identifies a config in the table (besides the seed); each is a `fit` key, read from the trial's full config.
CONFIG_KEYS = ("model.learning_rate", "model.lora_r", "model.lora_alpha", "data.batch_size", "trainer.max_steps")
SEED_KEY = "seed_everything"
# One row per validation; `base_model` names the weights the run trained (an embedded model's build hash), because a
# run's value moves with the build: rows of two builds are never compared in one reading.
TABLE_COLUMNS = ("study", "trial", "base_model", *CONFIG_KEYS, SEED_KEY, "step", "tokens", "value")
UNRECORDED = "unrecorded"  # a trial run before the sweep recorded its base model
# Which stages' runs each reader takes: the replay's full grid (stages 1-3, batch 64), and the batch slice (stages 4-5:
# lr x batch on one shape, recorded together: a run's value moves with the machine, so compare within one recording).
CORE_STUDIES = ("bench_core", "bench_seeds_base", "bench_seeds_long")
BATCH_STUDIES = ("bench_batch", "bench_batch_64")


def record_stage(space_path: Path, *, storage: str, root: Path, workers: int, fit_args: list[str]) -> int:
    """Run (or resume) one stage's study through the sweep command line; return the sweep's exit code."""
    command = [
        sys.executable, "-m", "lit_tuning.sweep", f"--search-space={space_path}", f"--storage={storage}",
        f"--results-root={root}", f"--workers={workers}", "--", "--tracking.wandb_mode=disabled", *fit_args,
    ]  # fmt: skip
    return subprocess.run(command).returncode


def stage_rows(space: SearchSpace, study: optuna.Study) -> list[dict]:
    """One row per validation of each completed trial: config keys, seed, step, tokens (pro rata) and accuracy."""
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        values = {key: trial.params.get(key, space.resolved_base[key]) for key in (*CONFIG_KEYS, SEED_KEY)}
        steps, tokens = trial.user_attrs.get("steps"), trial.user_attrs.get("tokens")
        build = trial.user_attrs.get("base_model", UNRECORDED)
        for step, value in sorted(trial.intermediate_values.items()):
            # Tokens are recorded per trial; batches are drawn uniformly, so a point's share is its share of steps.
            point_tokens = round(tokens * step / steps) if steps and tokens else None
            rows.append({"study": study.study_name, "trial": trial.number, "base_model": build, **values,
                         "step": step, "tokens": point_tokens, "value": value})  # fmt: skip
    return rows


def export_table(stages: tuple[Path, ...], *, storage: str, recorded: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table of every completed trial of every stage: from the storage, or else from the `recorded` table.

    A stage whose study is not in this storage keeps its rows of the table recorded before (another machine, a
    storage since deleted), so recording one new stage never drops the others; stages never recorded are skipped.
    """
    names = {summary.study_name for summary in optuna.get_all_study_summaries(storage)}
    columns = list(TABLE_COLUMNS)
    parts, seen = [], set()
    for path in stages:
        space = load_search_space(path)
        if space.name in seen:  # a stage named twice (in the defaults and on the command line): its rows once
            continue
        seen.add(space.name)
        if space.name in names:
            parts.append(pd.DataFrame(stage_rows(space, load_study(space.name, storage)), columns=columns))
        elif recorded is not None:
            parts.append(recorded.loc[recorded.study == space.name, columns])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def read_table_rows(path: Path) -> pd.DataFrame:
    """Read a recorded table's rows; refuse a file that lacks its columns."""
    frame = pd.read_csv(path)
    missing = [column for column in TABLE_COLUMNS if column not in frame]
    if missing:
        raise ValueError(f"columns {missing} are missing; allowed: a table written by lit_tuning.bench.search_table")
    return frame


def load_table(path: Path, where: list[str], studies: tuple[str, ...] = CORE_STUDIES) -> CurveTable:
    """Read the recorded table, keep the rows of `studies` matching every key=value of `where`, build the grid."""
    frame = read_table_rows(path)
    frame = frame[frame.study.isin(studies)]
    builds = frame.groupby("base_model").study.unique()
    if len(builds) > 1:
        found = "; ".join(f"{build} ({', '.join(names)})" for build, names in builds.items())
        raise ValueError(f"studies {list(studies)} were recorded on {len(builds)} base models: {found}; allowed: one "
                         "base model, so re-record them together (make bench-search-record --stages ...)")  # fmt: skip
    for condition in where:
        key, _, text = condition.partition("=")
        if key not in CONFIG_KEYS or not text:
            raise ValueError(f"--where {condition!r}; allowed: key=value with key one of {', '.join(CONFIG_KEYS)}")
        frame = frame[np.isclose(frame[key].astype(float), float(yaml.safe_load(text)))]
    return from_frame(frame, CONFIG_KEYS, seed_key=SEED_KEY)


def table_parser(prog: str, description: str | None) -> ArgumentParser:
    """The options every reader of the table shares: which table, which slice of it, where results go."""
    parser = command_parser(prog, description)
    parser.add_argument("--table", type=Path, default=TABLE, help=f"recorded table (default {TABLE})")
    parser.add_argument(
        "--where", type=list[str] | str, default=[], help="keep a slice: data.batch_size=64, or several as [a=1,b=2]"
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help=f"where the CSVs go (default {BENCH_DIR})")
    return parser


def open_table(args: Namespace) -> CurveTable | None:
    """Load the table the options name; on bad input print one line naming the file and return None."""
    try:
        return load_table(args.table, listed(args.where))
    except (OSError, ValueError) as error:
        print(f"{args.table}: {error}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    """Record every stage in order (resuming a stopped one), rewriting the table after each; or only export."""
    argv = sys.argv[1:] if argv is None else list(argv)
    own, fit_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = command_parser("python -m lit_tuning.bench.search_table", __doc__)
    parser.add_argument(
        "--stages", type=list[Path] | Path, default=list(STAGES), help="stage search spaces to record, in order"
    )
    parser.add_argument("--storage", default=RECORD_STORAGE, help=f"Optuna storage (default {RECORD_STORAGE})")
    parser.add_argument("--root", type=Path, default=RECORD_ROOT, help="run directories and tracker stores")
    parser.add_argument("--out", type=Path, default=TABLE, help=f"the table CSV (default {TABLE})")
    parser.add_argument("--export-only", action="store_true", help="write the table from what is recorded so far")
    parser.add_argument(
        "--workers", type=Count, default=1, help="sweep workers (1 leaves a core free; 2 on a quiet 2-core host)"
    )
    args = parse_or_exit(parser, own)  # what follows `--` is passed to every `fit`
    stages = tuple(listed(args.stages))
    try:
        for path in stages:  # every stage is checked before the first one trains
            load_search_space(path)
    except SearchSpaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    exported = (*STAGES, *stages)  # the table keeps every stage, recorded now or before
    try:
        recorded = read_table_rows(args.out) if args.out.exists() else None
    except ValueError as error:
        print(f"error: {args.out}: {error}", file=sys.stderr)
        return 2
    args.root.mkdir(parents=True, exist_ok=True)
    for path in () if args.export_only else stages:
        code = record_stage(path, storage=args.storage, root=args.root, workers=args.workers, fit_args=fit_args)
        atomic_write(args.out, export_table(exported, storage=args.storage, recorded=recorded).to_csv(index=False))
        if code:  # the sweep said why on its own line; the table keeps what was recorded
            print(f"{path}: the sweep exited with code {code}; re-run to resume", file=sys.stderr)
            return code
    table = export_table(exported, storage=args.storage, recorded=recorded)
    atomic_write(args.out, table.to_csv(index=False))
    last_steps = table.groupby(["study", "trial"]).step.max()
    print(f"{args.out}: {len(last_steps)} runs, {len(table)} points, {int(last_steps.sum())} training steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
