"""The original task's experiment generator (`python -m lit_tuning.experiment --mode single|grid|sweep`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import Namespace

from lit_tuning.commands import command_parser, parse_or_exit
from lit_tuning.experiment.config import (
    ConfigError,
    ResolvedConfig,
    atomic_write,
    composition_header,
    dump_config,
    safe_name,
)
from lit_tuning.experiment.search_space import SearchSpace, SearchSpaceError, load_search_space
from lit_tuning.experiment.strategies import design, trial_config
from lit_tuning.experiment.wandb_export import (
    SweepExportError,
    check_command,
    create_sweep,
    sweep_config,
    validate_sweep_config,
)
from lit_tuning.paths import SEED_GRID_SPACE as DEFAULT_SEARCH_SPACE

DEFAULT_OUT_DIR = "configs/hyperparameters/experiments"  # git-ignored: generated files never enter the tree
DEFAULT_PROJECT = "lit_tuning"


def parse_cli(argv: list[str] | None) -> Namespace:
    """Parse the generator's command line (exit 2 with one line on a bad one)."""
    parser = command_parser(
        "python -m lit_tuning.experiment",
        "Write experiment configs (single, grid/oat) or a W&B sweep config from a search space.",
    )
    parser.add_argument("--mode", type=Literal["single", "grid", "sweep"], default="single", help="what to write")
    parser.add_argument("--name", type=str | None, default=None, help="base name of the files (default: the space's)")
    parser.add_argument("--search-space", default=DEFAULT_SEARCH_SPACE, help="search space YAML file")
    parser.add_argument("--full-grid", action="store_true", help="grid mode: the full factorial instead of oat")
    parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help="folder for the written files")
    parser.add_argument(
        "--set", type=str, action="append", default=[], help="single mode: a dotted KEY=VALUE override (repeatable)"
    )
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="sweep mode: the W&B project")
    return parse_or_exit(parser, argv)


def main(argv: list[str] | None = None) -> int:
    """Run the generator; print each file written and the count; exit 2 with the reason, writing nothing, on error."""
    args = parse_cli(argv)
    try:
        space = load_search_space(args.search_space)
        name = safe_name(args.name or space.name)
        stamp = time.strftime("%Y%m%d_%H%M%S")
        out_dir = Path(args.out_dir)
        if args.mode == "sweep":
            written = [write_sweep(space, out_dir / f"{name}_sweep_{stamp}.yaml", project=args.project)]
        else:
            written = write_experiments(plan(space, args, name=name, stamp=stamp, out_dir=out_dir))
    except (SearchSpaceError, ConfigError, SweepExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. --out-dir is a file or not writable
        print(f"error: cannot write to {args.out_dir}: {error}; allowed: a writable folder", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    kind = "W&B sweep config" if args.mode == "sweep" else "experiment config"
    print(f"{len(written)} {kind}{'s' if len(written) != 1 else ''} written to {args.out_dir}")
    return 0


def plan(
    space: SearchSpace, args: Namespace, *, name: str, stamp: str, out_dir: Path
) -> list[tuple[Path, ResolvedConfig]]:
    """Return (path, resolved config) for every file to write; every config is validated here, before any write."""
    if args.mode == "single":
        overrides = dict(parse_assignment(item) for item in args.set)
        resolved = trial_config(space, overrides, any_key=True)
        return [(out_dir / f"{name}_{stamp}.yaml", resolved)]
    if args.set:
        raise ConfigError("--set applies to --mode single only; allowed in grid mode: edit the search space")
    trials = design(space, full_grid=args.full_grid)
    width = len(str(len(trials)))
    return [
        (out_dir / f"{name}_{stamp}_{number:0{width}d}.yaml", trial_config(space, overrides))
        for number, overrides in enumerate(trials, start=1)
    ]


def parse_assignment(item: str) -> tuple[str, Any]:
    """Split a `--set key=value` item; the value is read as YAML (8 -> int, 1e-4 -> float, [a, b] -> list)."""
    key, separator, value = item.partition("=")
    if not separator or not key:
        raise ConfigError(f"--set {item!r} is not KEY=VALUE; allowed: e.g. --set model.lora_r=8")
    return key.removeprefix("--"), yaml.safe_load(value)


def write_experiments(planned: list[tuple[Path, ResolvedConfig]]) -> list[Path]:
    """Write each planned config atomically, after checking that none of the files exists yet."""
    existing = [str(path) for path, _ in planned if path.exists()]
    if existing:
        raise ConfigError(f"refusing to overwrite {existing[0]}; allowed: a new --name or --out-dir")
    written = []
    for path, resolved in planned:
        usage = f"# run: python -m lit_tuning fit --config configs/base.yaml --config {path}\n"
        text = composition_header(resolved.experiment) + usage + dump_config(resolved, "yaml")
        written.append(atomic_write(path, text))
    return written


def write_sweep(space: SearchSpace, path: Path, *, project: str) -> Path:
    """Export, validate and write the W&B sweep config; create the sweep only when an API key is configured."""
    config, notes = sweep_config(space)
    validate_sweep_config(config)
    check_command(space)
    if path.exists():
        raise ConfigError(f"refusing to overwrite {path}; allowed: a new --name or --out-dir")
    header = f"# W&B sweep of {space.path}; create it with: wandb sweep --project {project} {path}\n"
    atomic_write(
        path, header + "".join(f"# note: {note}\n" for note in notes) + yaml.safe_dump(config, sort_keys=False)
    )
    for note in notes:
        print(f"note: {note}")
    print(create_sweep(path, project=project))
    return path


if __name__ == "__main__":
    sys.exit(main())
