"""`make gpu-check`: short bf16 studies of real-model-shaped LoRA trials on the GPUs, one row per worker packing.

Offline: SmolLM2-135M- and Qwen2.5-0.5B-shaped models are built from their transformers configs with random weights
(lit_tuning.train.shaped_models). For each model it runs the same short study through the real sweep driver with
1, 2 and 4 workers on one GPU (and one 2-GPU DDP study where two GPUs exist) and prints tokens/s, MFU, peak GPU
memory and trials/hour. Without a GPU it says so and exits 0.

MFU counts the FLOPs LoRA training on a frozen base does per prompt token: 4*N_body (forward 2N plus the backward's
input gradients 2N; the frozen weights get no gradient, the LoRA factors' are negligible) + 12*L*d*seq (attention
scores and mixing, forward and both operands' gradients), plus 4*V*d per question for the LM head, which the lean
step applies at the answer position only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from argparse import SUPPRESS
from pathlib import Path
from typing import Literal

import optuna
import pandas as pd
import torch
import yaml
from jsonargparse.typing import PositiveFloat

from lit_tuning.commands import command_parser, listed, parse_or_exit
from lit_tuning.paths import BASE_CONFIG, BENCH_ROOT, SPACES_DIR
from lit_tuning.train.shaped_models import SHAPES, SMOKE_SHRINK, ensure_shaped_model, shaped_config

# Dense bf16 peak TFLOP/s by device name fragment (vendor datasheets); --peak-tflops overrides.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}
PACKINGS = (1, 2, 4)
STEPS, VAL_EVERY, BATCH = 100, 50, 32


def no_gpu_message() -> str | None:
    """Return why the check cannot run here, or None when a CUDA GPU is visible."""
    if not torch.cuda.is_available():
        return "gpu-check: no NVIDIA GPU visible to torch (torch.cuda.is_available() is False); nothing to check"
    return None


def check_space(folder: Path, model_dir: Path, shape: str, trials: int, overrides: dict) -> Path:
    """Write the search space of one check study: the model's config, a short run, two searched parameters."""
    document = {
        "name": f"gpu-check-{shape}",
        "strategy": "random",
        "n_trials": trials,
        "seed": 0,
        "objective": {"metric": "val/letter_position_accuracy"},
        "pruner": "none",  # every trial trains the same steps, so the packings are compared on equal work
        "base": {
            "configs": [BASE_CONFIG, (SPACES_DIR.parent / "models" / f"{shape}.yaml").as_posix()],
            "overrides": {
                "model.model_name_or_path": str(model_dir),
                "trainer.max_steps": STEPS,
                "trainer.val_check_interval": VAL_EVERY,
                "trainer.limit_val_batches": 2,
                "trainer.enable_progress_bar": False,
                "data.batch_size": BATCH,
                **overrides,
            },
        },
        "parameters": {
            "model.learning_rate": {"low": 1e-4, "high": 1e-3, "log": True},
            "model.lora_r": {"candidates": [8, 16]},
        },
    }
    path = folder / f"{shape}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class MemoryPoller:
    """Polls device-wide used memory of every GPU (all worker processes together) with nvidia-smi; keeps the peak.

    nvidia-smi rather than torch: a CUDA context in this process would itself take memory on every GPU.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.peak_mib = float("nan")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval_s,), daemon=True)

    def _poll(self, interval_s: float) -> None:
        query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.wait(interval_s):
            try:
                used = max(float(line) for line in subprocess.run(query, capture_output=True, text=True).stdout.split())
            except (OSError, ValueError):
                continue  # no nvidia-smi: the peak stays unknown (nan) rather than wrong
            self.peak_mib = used if self.peak_mib != self.peak_mib else max(self.peak_mib, used)

    def __enter__(self) -> MemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def flops_per_token(config, seq_len: float) -> float:
    """Training FLOPs per prompt token of LoRA on a frozen base, LM head excluded (see the module docstring)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    body = layers * (d * d * 2 + d * kv * 2 + 3 * d * config.intermediate_size)  # q, o; k, v; gate, up, down
    return 4 * body + 12 * layers * d * seq_len


def run_study(space: Path, root: Path, *, sweep_args: list[str], fit_args: list[str]) -> dict:
    """Run one check study through the sweep driver; return wall time, trials, tokens and steps."""
    storage = f"sqlite:///{root / 'optuna.db'}"
    command = [
        sys.executable, "-m", "lit_tuning.sweep", f"--search-space={space}", f"--storage={storage}",
        f"--results-root={root}", *sweep_args, "--", "--tracking.wandb_mode=disabled", *fit_args,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"study failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    study = optuna.load_study(study_name=yaml.safe_load(space.read_text())["name"], storage=storage)
    done = [trial for trial in study.trials if trial.state.name == "COMPLETE"]
    return {
        "wall_s": wall,
        "trials": len(done),
        "tokens": sum(trial.user_attrs.get("tokens", 0) for trial in done),
        "steps": sum(trial.user_attrs.get("steps", 0) for trial in done),
    }


def check_row(
    shape: str, label: str, stats: dict, *, config, peak_mib: float, peak_tflops: float | None, gpus: int = 1
) -> dict:
    """Turn one study's totals into the printed row: tokens/s, MFU (over `gpus` GPUs), peak memory, trials/hour."""
    # A trial records rank 0's tokens; in a DDP trial each of the `gpus` ranks trains its own batch of as many.
    tokens, questions = stats["tokens"] * gpus, stats["steps"] * BATCH * gpus
    seq_len = tokens / max(1, questions)
    flops = tokens * flops_per_token(config, seq_len) + questions * 4 * config.vocab_size * config.hidden_size
    achieved = flops / stats["wall_s"] / 1e12
    return {
        "model": shape,
        "packing": label,
        "trials": stats["trials"],
        "tokens_per_s": tokens / stats["wall_s"],
        "achieved_tflops": achieved,
        "mfu": achieved / (peak_tflops * gpus) if peak_tflops else float("nan"),
        "peak_memory_mib": peak_mib,
        "trials_per_hour": 3600 * stats["trials"] / stats["wall_s"],
    }


def packings(gpus: int, quick: bool) -> list[tuple[str, list[str]]]:
    """The (label, sweep arguments) of each packing to measure on this machine."""
    rows = [(f"{n} worker(s)/GPU", ["--devices=0", f"--workers-per-gpu={n}"]) for n in PACKINGS[: 1 if quick else 3]]
    if gpus >= 2 and not quick:
        rows.append(("1 trial on 2 GPUs (DDP)", ["--devices=0,1", "--devices-per-trial=2"]))
    return rows


def measure_model(shape: str, *, root: Path, peak: float | None, quick: bool, cpu_smoke: bool) -> list[dict]:
    """Build one shaped model and run its check study once per packing; return one row per packing."""
    shrink = SMOKE_SHRINK if cpu_smoke else {}
    model_dir = ensure_shaped_model(shape, **shrink)
    config = shaped_config(shape, 0, **shrink)
    if cpu_smoke:  # the same path on CPU: the test suite's check of everything but CUDA
        plans = [("1 worker (CPU smoke)", ["--devices=cpu", "--workers=1"])]
        overrides = {"trainer.accelerator": "cpu", "trainer.max_steps": 4, "trainer.val_check_interval": 2}
        fit_args = ["--trainer.precision=bf16-mixed", "--model.torch_dtype=float32"]
    else:
        plans, overrides, fit_args = packings(torch.cuda.device_count(), quick), {}, ["--trainer.precision=bf16-mixed"]
    rows = []
    for index, (label, sweep_args) in enumerate(plans):
        per_gpu = next((int(a.split("=")[1]) for a in sweep_args if a.startswith("--workers-per-gpu=")), 1)
        gpus = 2 if "--devices-per-trial=2" in sweep_args else 1
        folder = root / f"{shape}-{index}"
        folder.mkdir(parents=True)
        space = check_space(folder, model_dir, shape, 2 * per_gpu, overrides)  # two trials per worker: warm ones
        with MemoryPoller() as poller:
            stats = run_study(space, folder, sweep_args=sweep_args, fit_args=fit_args)
        memory = poller.peak_mib
        rows.append(check_row(shape, label, stats, config=config, peak_mib=memory, peak_tflops=peak, gpus=gpus))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the check on this machine's GPUs, or say there are none and exit 0."""
    parser = command_parser("python -m lit_tuning.bench.gpu_check", __doc__)
    parser.add_argument(
        "--models",
        type=list[Literal[tuple(SHAPES)]] | Literal[tuple(SHAPES)],
        default=list(SHAPES),
        help="model shapes",
    )
    parser.add_argument(
        "--peak-tflops",
        type=PositiveFloat | None,
        default=None,
        help="the GPU's dense bf16 peak (default: from its name)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_ROOT)
    parser.add_argument("--quick", action="store_true", help="one packing, for a first look")
    parser.add_argument("--cpu-smoke", action="store_true", help=SUPPRESS)
    args = parse_or_exit(parser, argv)
    message = no_gpu_message()
    if message and not args.cpu_smoke:
        print(message)
        return 0
    name = "cpu" if args.cpu_smoke else torch.cuda.get_device_name(0)
    peak = args.peak_tflops or next((v for key, v in PEAK_TFLOPS.items() if key in name), None)
    root = Path(tempfile.mkdtemp(prefix="lit_tuning-gpu-check-"))
    rows = [
        row
        for shape in listed(args.models)
        for row in measure_model(shape, root=root, peak=peak, quick=args.quick, cpu_smoke=args.cpu_smoke)
    ]
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "gpu_check.csv", index=False)
    (args.out / "gpu_check.json").write_text(json.dumps({"device": name, "peak_tflops": peak}) + "\n")
    print(f"device: {name}; peak {peak or '?'} TFLOP/s bf16 dense; {STEPS} steps x batch {BATCH} per trial")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
