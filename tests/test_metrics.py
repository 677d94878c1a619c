"""The metric registry and the baseline computations."""

import pytest
import torch

from lit_tuning.train.metrics import (
    METRICS,
    PRIMARY_METRIC,
    answer_accuracy_counts,
    best_constant_per_position_accuracy,
    chance_accuracy,
    get_metric,
    objective_metrics,
)


def test_primary_metric_is_registered_and_maximized():
    metric = get_metric(PRIMARY_METRIC)
    assert metric.direction == "maximize"
    assert metric.meaning


def test_every_metric_has_a_meaning_and_a_known_direction():
    for name, metric in METRICS.items():
        assert metric.name == name
        assert metric.direction in ("maximize", "minimize", None)
        assert len(metric.meaning) > 10
    assert {m.name for m in objective_metrics()} >= {PRIMARY_METRIC, "val/loss"}


def test_unknown_metric_lists_the_allowed_names():
    with pytest.raises(ValueError, match="unknown metric 'val/acc'.*val/letter_position_accuracy"):
        get_metric("val/acc")


def test_answer_accuracy_counts_exact_matches():
    logits = torch.tensor([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert answer_accuracy_counts(logits, torch.tensor([1, 2, 2])) == (2, 3)


def test_chance_is_one_in_26():
    assert chance_accuracy() == pytest.approx(1 / 26)


def test_best_constant_per_position_uses_the_training_majority_letter():
    train = ["cat", "car", "bat"]  # position 0: c, position 1: a, position 2: t (2 of 3)
    # "cab": c ok, a ok, b wrong; "dog": all wrong; "at": position 0 'a' != 'c', 't' != 'a'
    assert best_constant_per_position_accuracy(train, ["cab", "dog", "at"]) == pytest.approx(2 / 8)
    # a position never seen in training counts as wrong
    assert best_constant_per_position_accuracy(["ab"], ["abc"]) == pytest.approx(2 / 3)


def test_the_docs_table_matches_the_registry():
    from conftest import ROOT

    from lit_tuning.train.metrics import markdown_table

    assert markdown_table() in (ROOT / "docs/training.md").read_text()
