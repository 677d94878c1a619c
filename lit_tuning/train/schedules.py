"""The learning-rate schedule shared by LoRA training and base-model pretraining: warmup, then a decay."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

Schedule = Literal["constant", "linear", "cosine"]


def lr_multiplier(
    schedule: Schedule, warmup_steps: int, total_steps: int, floor: float = 0.0
) -> Callable[[int], float]:
    """Return step -> multiplier of the peak learning rate: linear warmup, then constant, or a linear or cosine
    decay from 1 to `floor` at total_steps."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * decay

    return multiplier
