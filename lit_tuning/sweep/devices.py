"""Which devices each worker gets: one GPU each (or K workers per GPU, or K GPUs per DDP trial), or CPU cores."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

# The default CPU plan: one single-thread worker per core, as many as memory holds. Measured on 2 cores with the
# default model: two 1-thread processes side by side train ~1.34x faster than one 2-thread process (small matrices
# leave a second thread idle much of the step; separate processes share nothing). Each worker holds its own copy
# of the model, so memory, not cores, bounds the count for a real model.
WORKER_OVERHEAD_BYTES = 1 << 30  # Python, torch, Lightning and the trackers: ~0.8 GiB RSS measured per worker
MODEL_MEMORY_FACTOR = 4  # weights, activations and their gradients, allocator slack: x the weight bytes
MEMORY_SHARE = 0.8  # of the memory available now; the rest stays for the driver and the OS


class DeviceError(ValueError):
    """A --devices value that does not match this machine; the message says what is allowed."""


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    """One worker's name, environment, `fit` device arguments and torch thread count."""

    index: int
    device: str  # "cpu" or "cuda:<physical GPU index>"
    env: dict[str, str]
    fit_args: tuple[str, ...]
    threads: int
    devices_per_trial: int = 1  # > 1: each trial is a DDP run over this many GPUs or CPU processes

    @property
    def name(self) -> str:
        """The worker's name in logs and trial records."""
        return f"worker-{self.index}"


def visible_gpus() -> list[str]:
    """Return the GPU indices this process may use (CUDA_VISIBLE_DEVICES order, else 0..n-1)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [item.strip() for item in listed.split(",") if item.strip()][:count]
    return [str(index) for index in range(count)]


def plan_workers(
    workers: int | None,
    devices: str = "auto",
    workers_per_gpu: int = 1,
    *,
    devices_per_trial: int = 1,
    model_bytes: int | None = None,
) -> list[WorkerPlan]:
    """Plan the worker processes: GPUs when asked for or found (auto), else CPU (see cpu_worker_count)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpus = select_gpus(devices)
    if workers_per_gpu < 1:
        raise DeviceError(f"--workers-per-gpu {workers_per_gpu}; allowed: an integer >= 1")
    if devices_per_trial < 1 or (gpus and devices_per_trial > 1 and devices_per_trial > len(gpus)):
        raise DeviceError(
            f"--devices-per-trial {devices_per_trial}; allowed: 1 to {len(gpus) if gpus else 'the CPU cores'}"
        )
    if gpus and devices_per_trial > 1:
        return _ddp_gpu_plans(workers, gpus, devices_per_trial, cores)
    if gpus:
        count = workers or len(gpus) * workers_per_gpu
        threads = max(1, cores // count)
        return [
            WorkerPlan(
                index=index,
                device=f"cuda:{gpus[(index // workers_per_gpu) % len(gpus)]}",
                # The worker sees one GPU, as cuda:0: a trial never lands on another worker's device.
                env={"CUDA_VISIBLE_DEVICES": gpus[(index // workers_per_gpu) % len(gpus)], **thread_env(threads)},
                fit_args=("--trainer.accelerator=gpu", "--trainer.devices=1"),
                threads=threads,
            )
            for index in range(count)
        ]
    count = workers or max(1, cpu_worker_count(cores, model_bytes, available_memory()) // devices_per_trial)
    threads = max(1, cores // (count * devices_per_trial))  # each DDP rank is a process with its own threads
    ddp = ("--trainer.strategy=ddp",) if devices_per_trial > 1 else ()
    return [
        WorkerPlan(
            index=index,
            device="cpu",
            env={"CUDA_VISIBLE_DEVICES": "", **thread_env(threads)},
            fit_args=("--trainer.accelerator=cpu", f"--trainer.devices={devices_per_trial}", *ddp),
            threads=threads,
            devices_per_trial=devices_per_trial,
        )
        for index in range(count)
    ]


def _ddp_gpu_plans(workers: int | None, gpus: list[str], k: int, cores: int) -> list[WorkerPlan]:
    """Workers that each own k GPUs and run every trial as a k-process DDP run over them."""
    groups = [gpus[start : start + k] for start in range(0, len(gpus) - k + 1, k)]
    count = min(workers or len(groups), len(groups))  # GPUs are never shared between DDP trials
    threads = max(1, cores // (count * k))
    return [
        WorkerPlan(
            index=index,
            device="cuda:" + ",".join(groups[index]),
            env={"CUDA_VISIBLE_DEVICES": ",".join(groups[index]), **thread_env(threads)},
            fit_args=("--trainer.accelerator=gpu", f"--trainer.devices={k}", "--trainer.strategy=ddp"),
            threads=threads,
            devices_per_trial=k,
        )
        for index in range(count)
    ]


def cpu_worker_count(cores: int, model_bytes: int | None, available_bytes: int | None) -> int:
    """Default CPU workers: one per core (each single-threaded), fewer when memory cannot hold that many models."""
    if not model_bytes or not available_bytes:
        return cores
    per_worker = WORKER_OVERHEAD_BYTES + MODEL_MEMORY_FACTOR * model_bytes
    return max(1, min(cores, int(MEMORY_SHARE * available_bytes // per_worker)))


def available_memory() -> int | None:
    """Return the bytes of memory available now (Linux /proc/meminfo MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def model_weight_bytes(model_dir: str) -> int | None:
    """Return the bytes of a save_pretrained directory's weight files, or None for a hub id."""
    path = Path(model_dir)
    if not path.is_dir():
        return None
    return sum(file.stat().st_size for pattern in ("*.safetensors", "*.bin") for file in path.glob(pattern)) or None


def select_gpus(devices: str) -> list[str]:
    """Resolve --devices: auto (every visible GPU, or none), cpu, or a comma list of GPU indices."""
    available = visible_gpus()
    if devices == "cpu":
        return []
    if devices == "auto":
        return available
    wanted = [item.strip() for item in devices.split(",") if item.strip()]
    missing = [item for item in wanted if item not in available]
    if not wanted or missing:
        raise DeviceError(
            f"--devices {devices!r}: GPU {', '.join(missing) or '?'} not visible; "
            f"allowed: auto, cpu, or a comma list of {available or 'no GPUs on this machine'}"
        )
    return wanted


def thread_env(threads: int) -> dict[str, str]:
    """The variables that give a process `threads` intra-op threads (read when torch starts in it)."""
    # Set before torch starts in the worker, so its intra-op pools never oversubscribe the shared cores.
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def with_threads(threads: int) -> dict[str, str]:
    """This process's environment for a child process with `threads` intra-op threads."""
    return {**os.environ, **thread_env(threads)}
