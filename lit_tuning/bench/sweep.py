"""Benchmark: sweep throughput with 1, 2, ... workers on this machine, through the real driver (`make bench-sweep`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import yaml

from lit_tuning.commands import Count, command_parser, parse_or_exit
from lit_tuning.paths import BENCH_ROOT, DEFAULT_SEARCH_SPACE


def bench_space(folder: Path, trials: int, steps: int, model: str = "embedded:tiny") -> Path:
    """A random study of the default experiment with pruning off, so every run trains the same number of steps."""
    document = yaml.safe_load(DEFAULT_SEARCH_SPACE.read_text())
    document.update({"name": "bench", "strategy": "random", "n_trials": trials, "pruner": "none"})
    # Every run trains `steps` steps: a training length the default space tunes is fixed here instead.
    document["parameters"].pop("trainer.max_steps", None)
    document["base"].setdefault("overrides", {}).update(
        {
            "trainer.max_steps": steps,
            "trainer.val_check_interval": steps,
            "trainer.enable_progress_bar": False,
            "model.model_name_or_path": model,
        }
    )
    document["parameters"]["data.batch_size"] = {"candidates": [64]}  # equal work per step across runs
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run_study(workers: int, *, trials: int, steps: int, root: Path, model: str = "embedded:tiny") -> dict:
    """Run one study with the given worker count (the cores split evenly); return wall time and throughput."""
    out = root / f"workers-{workers}"
    out.mkdir(parents=True)
    space = bench_space(out, trials, steps, model)
    storage = f"sqlite:///{out / 'optuna.db'}"
    command = [
        sys.executable, "-m", "lit_tuning.sweep", f"--search-space={space}", f"--storage={storage}",
        f"--results-root={out}", f"--workers={workers}", "--", "--tracking.wandb_mode=disabled",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name="bench", storage=storage)
    steps_run = sum(trial.user_attrs.get("steps", 0) for trial in study.trials)
    threads = max(1, cores() // workers)
    return {
        "workers": workers,
        "threads": threads,
        "trials": len(study.trials),
        "wall_s": wall,
        "steps_per_s": steps_run / wall,
        "trials_per_hour": 3600 * len(study.trials) / wall,
    }


def cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> None:
    """Run the same study with each worker count and write a table and a figure."""
    parser = command_parser("python -m lit_tuning.bench.sweep", __doc__)
    parser.add_argument("--workers", type=Count, nargs="+", default=[1, 2])
    parser.add_argument("--trials", type=Count, default=4)
    parser.add_argument("--steps", type=Count, default=200)
    parser.add_argument("--out", type=Path, default=BENCH_ROOT)
    args = parse_or_exit(parser, argv)
    root = Path(tempfile.mkdtemp(prefix="lit_tuning-bench-sweep-"))
    table = pd.DataFrame([run_study(n, trials=args.trials, steps=args.steps, root=root) for n in args.workers])
    table["speedup"] = table["steps_per_s"] / table.loc[0, "steps_per_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "sweep_workers.csv", index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    draw(table, args.out / "sweep_workers.png")


def draw(table: pd.DataFrame, path: Path) -> None:
    """Bar chart of training steps per second of the whole study per worker count."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    axes = sns.barplot(data=table, x="workers", y="steps_per_s", color="#9ecae1")
    for index, row in table.iterrows():
        axes.annotate(f"{row.speedup:.2f}x", (index, row.steps_per_s), ha="center", va="bottom")
    axes.set(xlabel="worker processes", ylabel="training steps per second (whole study)", title="Sweep throughput")
    axes.figure.tight_layout()
    axes.figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
