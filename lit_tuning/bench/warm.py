"""Benchmark: a worker's per-trial fixed cost cold vs warm, and its memory across many trials of a real-shaped model.

One process runs N one-step trials through `fit` (cli_main, every tracker on) of a SmolLM2-135M-shaped model
(random weights, saved locally), once with the base model kept warm and once cold (reloaded per trial). A trial
of one step is almost all fixed cost: loading, tokenizing, building the adapter, trainer and trackers. The RSS
after each trial shows whether a long-lived worker's memory grows without bound.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import SUPPRESS
from pathlib import Path
from typing import Literal

from lit_tuning.commands import Count, command_parser, parse_or_exit
from lit_tuning.paths import BASE_CONFIG
from lit_tuning.sweep.devices import with_threads

SHAPE = "smollm2-135m"


def rss_mib() -> float:
    """Return this process's current resident memory in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_trials(model_dir: str, trials: int, warm_on: bool, root: Path) -> list[dict]:
    """Run one-step trials in this process; return each trial's wall time and memory after it."""
    from lit_tuning.train import warm
    from lit_tuning.train.cli import cli_main

    warm.enable(warm_on)
    rows = []
    for number in range(trials):
        args = [
            "fit", "--config", BASE_CONFIG, "--model.model_name_or_path", model_dir, "--data.num_words", "5000",
            "--data.batch_size", "8", "--data.eval_batch_size", "8", "--trainer.max_steps", "1",
            "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(root / "runs"), "--tracking.root", str(root),
            "--tracking.wandb_mode", "offline", f"--model.lora_r={8 * (1 + number % 2)}",
            "--run_name", f"{'warm' if warm_on else 'cold'}-{number:03d}",
        ]  # fmt: skip
        started = time.perf_counter()
        cli_main(args)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append({"trial": number, "seconds": time.perf_counter() - started, "rss_mib": rss_mib(), "peak_mib": peak})
    return rows


def measure(model_dir: str, trials: int, warm_on: bool, threads: int) -> list[dict]:
    """Run the trials in a fresh process (a worker), so the two modes never share memory or caches."""
    root = Path(tempfile.mkdtemp(prefix="lit_tuning-bench-warm-"))
    command = [sys.executable, "-m", "lit_tuning.bench.warm", "--once", "warm" if warm_on else "cold"]
    command += ["--model-dir", model_dir, "--trials", str(trials), "--root", str(root)]
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=with_threads(threads))
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(cold: list[dict], warm_rows: list[dict]) -> dict:
    """Fixed cost per trial cold vs warm (the first warm trial loads cold, so it is left out) and memory growth."""
    cold_s = statistics.median(row["seconds"] for row in cold)
    warm_s = statistics.median(row["seconds"] for row in warm_rows[1:])
    half = len(warm_rows) // 2
    growth = (warm_rows[-1]["rss_mib"] - warm_rows[half]["rss_mib"]) / max(1, len(warm_rows) - 1 - half)
    return {
        "cold_trial_s": cold_s,
        "warm_trial_s": warm_s,
        "cold_over_warm": cold_s / warm_s,
        "warm_trials": len(warm_rows),
        "warm_peak_rss_mib": max(row["peak_mib"] for row in warm_rows),
        "warm_rss_first_mib": warm_rows[0]["rss_mib"],
        "warm_rss_last_mib": warm_rows[-1]["rss_mib"],
        "rss_growth_mib_per_trial_second_half": growth,
    }


def compare(*, trials: int, cold_trials: int, quick: bool, threads: int) -> tuple[dict, list[dict]]:
    """Build the shaped model, run the cold and warm workers; return the summary and the per-trial rows."""
    from lit_tuning.train.shaped_models import SMOKE_SHRINK, ensure_shaped_model

    model_dir = str(ensure_shaped_model(SHAPE, **(SMOKE_SHRINK if quick else {})))
    cold = measure(model_dir, cold_trials, warm_on=False, threads=threads)
    warm_rows = measure(model_dir, trials, warm_on=True, threads=threads)
    rows = [{"mode": "cold", **row} for row in cold] + [{"mode": "warm", **row} for row in warm_rows]
    return summarize(cold, warm_rows), rows


def main(argv: list[str] | None = None) -> None:
    """`--once warm|cold` runs the trials in this process and prints them as JSON; else print the comparison."""
    parser = command_parser("python -m lit_tuning.bench.warm", __doc__)
    parser.add_argument("--once", type=Literal["warm", "cold"] | None, default=None, help=SUPPRESS)
    parser.add_argument("--model-dir", type=str | None, default=None, help=SUPPRESS)
    parser.add_argument("--root", type=Path | None, default=None, help=SUPPRESS)
    parser.add_argument("--trials", type=Count, default=20)
    parser.add_argument("--cold-trials", type=Count, default=3)
    parser.add_argument("--threads", type=Count, default=1)
    parser.add_argument("--quick", action="store_true", help="a shrunken model and few trials: a smoke run")
    args = parse_or_exit(parser, argv)
    if args.once:
        print(json.dumps(run_trials(args.model_dir, args.trials, args.once == "warm", args.root)))
        return
    summary, _ = compare(trials=args.trials, cold_trials=args.cold_trials, quick=args.quick, threads=args.threads)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
