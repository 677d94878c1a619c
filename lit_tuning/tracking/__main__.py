"""`python -m lit_tuning.tracking verify`: list every run's MLflow and W&B records; exit 1 on any mismatch."""

from __future__ import annotations

import sys
from pathlib import Path

from lit_tuning.commands import command_parser, parse_or_exit
from lit_tuning.paths import RUNS_ROOT
from lit_tuning.tracking.verify import check_run, find_runs, format_table


def main(argv: list[str] | None = None) -> int:
    """Run the verify command; return the exit status."""
    parser = command_parser("python -m lit_tuning.tracking", __doc__)
    commands = parser.add_subcommands(required=True, dest="command")
    verify = command_parser("verify", "check that MLflow and W&B agree with each run's own metrics")
    verify.add_argument("--runs-root", type=Path, default=RUNS_ROOT, help="where run dirs are")
    verify.add_argument("--study", type=str | None, default=None, help="only the trials of this study")
    verify.add_argument("--metric", type=str | None, default=None, help="final metric to compare (default: its own)")
    commands.add_subcommand("verify", verify, help="check that MLflow and W&B agree with each run's own metrics")
    args = parse_or_exit(parser, sys.argv[1:] if argv is None else argv).verify
    runs = find_runs(Path(args.runs_root), args.study)
    if not runs:
        print(f"no tracked runs under {args.runs_root}" + (f" for study {args.study!r}" if args.study else ""))
        return 1
    checks = [check_run(run, args.metric) for run in runs]
    print(format_table(checks))
    failed = [c for c in checks if c.problems]
    print(f"\n{len(checks)} runs checked, {len(failed)} with problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
