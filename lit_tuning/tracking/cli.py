"""The tracking command line: `verify` checks runs from their directories and from the trackers' side."""

from __future__ import annotations

import sys
from pathlib import Path

from lit_tuning.commands import command_parser, parse_or_exit
from lit_tuning.paths import RESULTS_ROOT, RUNS_ROOT
from lit_tuning.tracking.settings import TrackingSettings
from lit_tuning.tracking.store import server_problem
from lit_tuning.tracking.verify import format_table
from lit_tuning.tracking.verify_trackers import check_both_sides


def main(argv: list[str] | None = None) -> int:
    """Run the verify command; return the exit status (1 when any run has a problem)."""
    parser = command_parser("python -m lit_tuning.tracking", __doc__)
    commands = parser.add_subcommands(required=True, dest="command")
    verify = command_parser("verify", "check that MLflow and W&B agree with each run's own metrics")
    verify.add_argument("--runs-root", type=Path, default=RUNS_ROOT, help="where run dirs are")
    verify.add_argument("--study", type=str | None, default=None, help="only the trials of this study")
    verify.add_argument("--metric", type=str | None, default=None, help="final metric to compare (default: its own)")
    verify.add_argument(
        "--tracking-root", type=Path, default=RESULTS_ROOT, help="local stores to search too (mlflow.db, wandb/)"
    )
    verify.add_argument("--mlflow-uri", type=str | None, default=None, help="MLflow store or server to search too")
    verify.add_argument("--mlflow-experiment", default=TrackingSettings.mlflow_experiment, help="MLflow experiment")
    commands.add_subcommand("verify", verify, help="check that MLflow and W&B agree with each run's own metrics")
    args = parse_or_exit(parser, argv).verify
    settings = TrackingSettings(
        root=str(args.tracking_root), mlflow_tracking_uri=args.mlflow_uri, mlflow_experiment=args.mlflow_experiment
    )
    problem = args.mlflow_uri and server_problem(args.mlflow_uri)
    if problem:
        print(f"error: --mlflow-uri: {problem}", file=sys.stderr)
        return 2
    checks = check_both_sides(Path(args.runs_root), settings, study=args.study, metric=args.metric)
    if not checks:
        print(f"no tracked runs under {args.runs_root}" + (f" for study {args.study!r}" if args.study else ""))
        return 1
    print(format_table(checks))
    failed = [c for c in checks if c.problems]
    print(f"\n{len(checks)} runs checked, {len(failed)} with problems")
    return 1 if failed else 0
