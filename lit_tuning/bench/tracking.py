"""Benchmark: the step-time cost of MLflow and W&B logging on the default fit (`make bench-tracking`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd

from lit_tuning.commands import Count, command_parser, parse_or_exit
from lit_tuning.paths import BASE_CONFIG, BENCH_ROOT

VARIANTS = {
    "none": ["--tracking.mlflow", "false", "--tracking.wandb_mode", "disabled"],
    "mlflow": ["--tracking.mlflow", "true", "--tracking.wandb_mode", "disabled"],
    "wandb": ["--tracking.mlflow", "false", "--tracking.wandb_mode", "offline"],
    "both": ["--tracking.mlflow", "true", "--tracking.wandb_mode", "offline"],
}
TIMING_FILE = "step_timing.json"


class StepTimer(pl.Callback):
    """Writes the mean wall time of a training step, excluding validation, to <run_dir>/step_timing.json."""

    def __init__(self, skip_steps: int = 20) -> None:
        self.skip_steps = skip_steps  # the first steps warm up allocators and caches
        self.total = 0.0
        self.steps = 0
        self._started = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        """Start the clock."""
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        """Stop the clock; logging to the trackers happens inside the step, so it is counted."""
        if trainer.global_step > self.skip_steps:
            self.total += time.perf_counter() - self._started
            self.steps += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the result."""
        result = {"ms_per_step": 1000 * self.total / max(1, self.steps), "steps": self.steps}
        (Path(trainer.log_dir) / TIMING_FILE).write_text(json.dumps(result))


def run_variant(name: str, *, repeat: int, steps: int, root: Path) -> dict:
    """Run the default fit with one tracking variant and return its timing."""
    run_name = f"{name}-{repeat}"
    command = [
        sys.executable, "-m", "lit_tuning", "fit", "--config", BASE_CONFIG,
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps // 2),
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root / "runs"),
        "--tracking.root", str(root), "--run_name", run_name,
        "--trainer.callbacks+=lit_tuning.bench.tracking.StepTimer", *VARIANTS[name],
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    timing = json.loads((root / "runs" / run_name / TIMING_FILE).read_text())
    return {"variant": name, "repeat": repeat, **timing}


def logging_call_cost(calls: int = 500) -> dict[str, float]:
    """Return the wall ms of one `log_metrics` call of each tracker (MLflow including its batched writes)."""
    from lit_tuning.tracking import MLflowTracker, WandbTracker

    root = Path(tempfile.mkdtemp(prefix="lit_tuning-bench-"))
    trackers = {
        "mlflow": MLflowTracker(
            tracking_uri=f"sqlite:///{root}/mlflow.db", experiment="bench", run_name="calls", tags={}
        ),
        "wandb": WandbTracker(
            mode="offline", project="bench", entity=None, save_dir=root, run_name="calls", group=None,
            job_type="bench", tags={}, config={},
        ),
    }  # fmt: skip
    metrics = {"train/loss": 1.0, "train/tokens_per_second": 8000.0, "train/learning_rate": 2e-3, "epoch": 0.0}
    cost = {}
    for name, tracker in trackers.items():
        started = time.perf_counter()
        for step in range(calls):
            tracker.log_metrics(metrics, step=step)
        tracker.save()  # MLflow: write what is still buffered, so every point is stored and paid for
        cost[name] = 1000 * (time.perf_counter() - started) / calls
        tracker.finalize("success")
    shutil.rmtree(root, ignore_errors=True)
    return cost


def main(argv: list[str] | None = None) -> None:
    """Run every variant `repeats` times, interleaved, and write a table and a figure."""
    parser = command_parser("python -m lit_tuning.bench.tracking", __doc__)
    parser.add_argument("--steps", type=Count, default=300)
    parser.add_argument("--repeats", type=Count, default=2)
    parser.add_argument("--out", type=Path, default=BENCH_ROOT)
    parser.add_argument("--log-every", type=Count, default=10, help="trainer.log_every_n_steps of the default fit")
    args = parse_or_exit(parser, argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = [
        run_variant(name, repeat=repeat, steps=args.steps, root=args.out / f"tracking-{stamp}")
        for repeat in range(args.repeats)
        for name in VARIANTS  # interleaved, so a slow spell of the machine hits every variant alike
    ]
    table = pd.DataFrame(rows)
    summary = table.groupby("variant", sort=False)["ms_per_step"].median().to_frame()
    summary["overhead_vs_none"] = summary["ms_per_step"] / summary.loc["none", "ms_per_step"] - 1
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "tracking_overhead_runs.csv", index=False)
    summary.to_csv(args.out / "tracking_overhead.csv")
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    # End to end, identical runs differ by several percent on a shared 2-core machine; the direct cost of the
    # logging calls, spread over the steps between two logged steps, resolves what the A/B cannot.
    cost = pd.Series(logging_call_cost(), name="ms_per_log_call").to_frame()
    cost["ms_per_step"] = cost["ms_per_log_call"] / args.log_every
    cost["share_of_step"] = cost["ms_per_step"] / summary.loc["none", "ms_per_step"]
    cost.loc["both"] = cost.sum()
    cost.to_csv(args.out / "tracking_call_cost.csv")
    print(cost.to_string(float_format=lambda v: f"{v:.5f}"))
    draw(table, args.out / "tracking_overhead.png")


def draw(table: pd.DataFrame, path: Path) -> None:
    """Bar chart of ms/step per variant, each repeat shown as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    axes = sns.barplot(data=table, x="variant", y="ms_per_step", errorbar=None, color="#9ecae1")
    sns.stripplot(data=table, x="variant", y="ms_per_step", color="#08519c", ax=axes)
    axes.set(xlabel="tracking", ylabel="training step time (ms)", title="Logging overhead on the default fit")
    axes.figure.tight_layout()
    axes.figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
