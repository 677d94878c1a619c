"""The metric registry: every metric lit_tuning logs, with its direction and meaning, and how each is computed."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import torch

from lit_tuning.train.words import ALPHABET

Direction = Literal["maximize", "minimize"]


@dataclasses.dataclass(frozen=True)
class Metric:
    """A logged quantity: its name in every tracker, whether higher or lower is better, and what it means."""

    name: str
    direction: Direction | None  # None: descriptive only, never an objective
    meaning: str
    unit: str = ""


PRIMARY_METRIC = "val/letter_position_accuracy"
# Scopes logged with self.log during fit, so they reach trainer.callback_metrics (what the pruning callback and the
# objective read); test/* exist only after `test`, model/* go straight to the loggers.
FIT_SCOPES = ("train", "val", "system")

METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric(
            PRIMARY_METRIC,
            "maximize",
            "fraction of held-out (word, position) questions whose greedy answer token is the right letter",
        ),
        Metric("val/loss", "minimize", "cross-entropy of the answer token on held-out words", "nats"),
        Metric("test/letter_position_accuracy", "maximize", "the primary metric on the test words"),
        Metric("test/loss", "minimize", "cross-entropy of the answer token on the test words", "nats"),
        Metric("train/loss", "minimize", "cross-entropy of the answer token on the training batch", "nats"),
        Metric("train/tokens_per_second", "maximize", "prompt tokens processed per second of training", "tokens/s"),
        Metric("train/tokens_seen", None, "prompt tokens trained on so far (padding excluded)", "tokens"),
        Metric("train/learning_rate", None, "learning rate of the optimizer after the scheduler step"),
        Metric("model/trainable_params", "minimize", "parameters updated by training (the LoRA adapters)", "params"),
        Metric("model/total_params", None, "all parameters of the base model plus adapters", "params"),
        Metric("system/peak_memory_mb", "minimize", "peak accelerator memory, or peak process RSS on CPU", "MiB"),
        Metric("baseline/chance", None, "accuracy of guessing a uniformly random letter: 1/26"),
        Metric(
            "baseline/best_constant_per_position",
            None,
            "accuracy of answering, for each position, the letter most frequent there among training words",
        ),
    )
}


def get_metric(name: str) -> Metric:
    """Return a registered metric, or raise a ValueError listing the allowed names."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; allowed: {', '.join(sorted(METRICS))}") from None


def objective_metrics() -> list[Metric]:
    """Return the metrics that may serve as a tuning objective: those with a direction that a fit reports."""
    return [m for m in METRICS.values() if m.direction is not None and m.name.split("/")[0] in FIT_SCOPES]


def answer_accuracy_counts(logits: torch.Tensor, answer_ids: torch.Tensor) -> tuple[int, int]:
    """Return (correct, total) for answer-token logits of shape (batch, vocab) against the true answer ids."""
    return int((logits.argmax(dim=-1) == answer_ids).sum()), int(answer_ids.numel())


def chance_accuracy() -> float:
    """Return the accuracy of a uniformly random letter."""
    return 1 / len(ALPHABET)


def best_constant_per_position_accuracy(train_words: Sequence[str], eval_words: Sequence[str]) -> float:
    """Return the accuracy on every (word, position) of eval_words of the most frequent training letter per position."""
    by_position: dict[int, Counter[str]] = {}
    for word in train_words:
        for position, letter in enumerate(word):
            by_position.setdefault(position, Counter())[letter] += 1
    correct = total = 0
    for word in eval_words:
        for position, letter in enumerate(word):
            counts = by_position.get(position)
            correct += bool(counts) and counts.most_common(1)[0][0] == letter
            total += 1
    return correct / max(1, total)


def markdown_table() -> str:
    """Return the registry as a Markdown table (the docs embed it; a test keeps them in sync)."""
    rows = ["| metric | direction | unit | meaning |", "|---|---|---|---|"]
    for metric in METRICS.values():
        rows.append(f"| `{metric.name}` | {metric.direction or '-'} | {metric.unit or '-'} | {metric.meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
