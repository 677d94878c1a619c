"""Benchmark: `fit`'s training step against a bare PyTorch loop doing the same lean computation, side by side.

Both train the same PEFT model on the same batches with the same optimizer, schedule and clipping; `fit` adds
Lightning, the CSV logger and the MLflow + W&B trackers. The ratio of their ms/step is the framework's cost
(target <= 1.10). Each measurement runs in its own process with a fixed thread count; runs are interleaved so
that a slow spell of the machine hits both alike.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import SUPPRESS
from pathlib import Path

import torch

from lit_tuning.commands import Count, command_parser, listed, parse_or_exit
from lit_tuning.paths import BASE_CONFIG
from lit_tuning.sweep.devices import with_threads

SKIP_STEPS = 20  # as bench.tracking.StepTimer: the first steps warm up allocators and caches


def bare_loop_ms(model: str, steps: int, batch_size: int) -> float:
    """Mean ms of a training step of a plain loop over the default LoRA config (validation excluded)."""
    import lightning.pytorch as pl

    from lit_tuning.train.data import SpellingDataModule
    from lit_tuning.train.module import LoRAModule
    from lit_tuning.train.schedules import lr_multiplier

    pl.seed_everything(42)
    module = LoRAModule(model_name_or_path=model)  # the defaults of configs/base.yaml
    data = SpellingDataModule(model_name_or_path=model, batch_size=batch_size)
    data.setup("fit")
    params = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=module.hparams.learning_rate, weight_decay=0.0)
    schedule = lr_multiplier(module.hparams.lr_schedule, module.hparams.warmup_steps, steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    module.train()
    total, timed, step = 0.0, 0, 0
    while step < steps:
        for batch in data.train_dataloader():
            started = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(module.answer_logits(batch), batch["answer_ids"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            float(loss)  # fit logs the loss every step: the same synchronisation
            step += 1
            if step > SKIP_STEPS:
                total += time.perf_counter() - started
                timed += 1
            if step >= steps:
                break
    return 1000 * total / max(1, timed)


def fit_ms(model: str, steps: int, batch_size: int, threads: int, root: Path) -> float:
    """Mean ms of a training step of `fit` with every tracker on (CSV, MLflow, W&B offline; validation excluded)."""
    run_name = f"fit-{time.time_ns()}"
    command = [
        sys.executable, "-m", "lit_tuning", "fit", "--config", BASE_CONFIG, "--model.model_name_or_path", model,
        "--data.batch_size", str(batch_size), "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(steps), "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root / "runs"), "--tracking.root", str(root), "--run_name", run_name,
        "--tracking.wandb_mode", "offline", "--trainer.callbacks+=lit_tuning.bench.tracking.StepTimer",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, env=with_threads(threads))
    return json.loads((root / "runs" / run_name / "step_timing.json").read_text())["ms_per_step"]


def measure(mode: str, *, model: str, steps: int, batch_size: int, threads: int, root: Path) -> float:
    """Run one measurement in a fresh process with `threads` torch threads; return its ms/step."""
    if mode == "fit":
        return fit_ms(model, steps, batch_size, threads, root)
    command = [
        sys.executable, "-m", "lit_tuning.bench.step", "--bare-once", "--model", model, "--steps", str(steps),
        "--batch-size", str(batch_size),
    ]  # fmt: skip
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=with_threads(threads))
    return float(result.stdout.strip().splitlines()[-1])


def compare(*, model: str, steps: int, batch_size: int, threads: list[int], repeats: int) -> list[dict]:
    """Interleave fit and bare-loop runs at each thread count; return one row per thread count with the ratio."""
    root = Path(tempfile.mkdtemp(prefix="lit_tuning-bench-step-"))
    rows = []
    for count in threads:
        times: dict[str, list[float]] = {"fit": [], "bare": []}
        for _ in range(repeats):
            for mode in times:
                times[mode].append(
                    measure(mode, model=model, steps=steps, batch_size=batch_size, threads=count, root=root)
                )
        fit, bare = statistics.median(times["fit"]), statistics.median(times["bare"])
        rows.append({"threads": count, "fit_ms_per_step": fit, "bare_ms_per_step": bare, "fit_over_bare": fit / bare})
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the fit-vs-bare comparison (`--bare-once`: measure the bare loop once, in this process)."""
    parser = command_parser("python -m lit_tuning.bench.step", __doc__)
    parser.add_argument("--bare-once", action="store_true", help=SUPPRESS)
    parser.add_argument("--model", default="embedded:tiny")
    parser.add_argument("--steps", type=Count, default=200)
    parser.add_argument("--batch-size", type=Count, default=64)
    parser.add_argument("--threads", type=list[Count] | Count, default=[1, 2], help="thread counts, e.g. [1,2]")
    parser.add_argument("--repeats", type=Count, default=2)
    args = parse_or_exit(parser, argv)
    if args.bare_once:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        print(bare_loop_ms(args.model, args.steps, args.batch_size))
        return
    rows = compare(
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        threads=listed(args.threads),
        repeats=args.repeats,
    )
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
