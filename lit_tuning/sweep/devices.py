"""Which device each worker gets: one GPU each (or K per GPU), or an equal share of the CPU cores."""

from __future__ import annotations

import dataclasses
import os

import torch


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


def plan_workers(workers: int | None, devices: str = "auto", workers_per_gpu: int = 1) -> list[WorkerPlan]:
    """Plan the worker processes: GPUs when asked for or found (auto), else CPU with the cores split evenly."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpus = select_gpus(devices)
    if workers_per_gpu < 1:
        raise DeviceError(f"--workers-per-gpu {workers_per_gpu}; allowed: an integer >= 1")
    if gpus:
        count = workers or len(gpus) * workers_per_gpu
        threads = max(1, cores // count)
        return [
            WorkerPlan(
                index=index,
                device=f"cuda:{gpus[(index // workers_per_gpu) % len(gpus)]}",
                # The worker sees one GPU, as cuda:0: a trial never lands on another worker's device.
                env={"CUDA_VISIBLE_DEVICES": gpus[(index // workers_per_gpu) % len(gpus)], **_thread_env(threads)},
                fit_args=("--trainer.accelerator=gpu", "--trainer.devices=1"),
                threads=threads,
            )
            for index in range(count)
        ]
    # Two single-thread workers train the tiny model ~1.45x faster than one two-thread worker on 2 cores
    # (small matrices leave threads idle); beyond two, each worker keeps a fair share of the cores.
    count = workers or min(2, cores)
    threads = max(1, cores // count)
    return [
        WorkerPlan(
            index=index,
            device="cpu",
            env={"CUDA_VISIBLE_DEVICES": "", **_thread_env(threads)},
            fit_args=("--trainer.accelerator=cpu", "--trainer.devices=1"),
            threads=threads,
        )
        for index in range(count)
    ]


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


def _thread_env(threads: int) -> dict[str, str]:
    # Set before torch starts in the worker, so its intra-op pools never oversubscribe the shared cores.
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
