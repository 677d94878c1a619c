"""Synthetic Optuna studies in SQLite for the analysis tests: known truths, and every shape a legal study can take."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import optuna

ROOT = Path(__file__).resolve().parents[1]
FULL_STEPS = 1000
TOKENS_PER_STEP = 640
COMPLETE, PRUNED, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL
LR = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
RANK = optuna.distributions.CategoricalDistribution([4, 8, 16])
DROPOUT = optuna.distributions.FloatDistribution(0.0, 0.2)
BATCH = optuna.distributions.CategoricalDistribution([16, 64])
DISTRIBUTIONS = {
    "model.learning_rate": LR,
    "model.lora_r": RANK,
    "model.lora_dropout": DROPOUT,
    "data.batch_size": BATCH,
}
SPACE_LINES = {
    "model.learning_rate": "{low: 1.0e-4, high: 1.0e-2, log: true}",
    "model.lora_r": "{candidates: [4, 8, 16]}",
    "model.lora_dropout": "{low: 0.0, high: 0.2}",
    "data.batch_size": "{candidates: [16, 64]}",
}
BASE_PARAMS = {"model.learning_rate": 2e-3, "model.lora_r": 16, "model.lora_dropout": 0.0, "data.batch_size": 64}


def accuracy(learning_rate: float, rank: int) -> float:
    """The synthetic study's truth: a peak at lr 2e-3, a small rank effect, no dropout effect."""
    return 0.6 - 0.15 * (math.log10(learning_rate) - math.log10(2e-3)) ** 2 + 0.002 * math.log2(rank)


def space_yaml(name: str, keys: list[str], metric: str = "val/letter_position_accuracy") -> str:
    """A search space over the given keys of SPACE_LINES that load_search_space accepts."""
    parameters = "\n".join(f"  {key}: {SPACE_LINES[key]}" for key in keys)
    return (
        f"name: {name}\nstrategy: tpe\nn_trials: 24\nseed: 0\nobjective: {{metric: {metric}}}\n"
        f"pruner: {{type: median, n_startup_trials: 2}}\n"
        f"base:\n  configs: [{ROOT / 'configs/base.yaml'}]\n  overrides: {{trainer.max_steps: {FULL_STEPS}}}\n"
        f"parameters:\n{parameters}\n"
    )


def new_study(tmp_path: Path, name: str, keys: list[str], *, metric: str = "val/letter_position_accuracy"):
    """An empty SQLite study whose user attributes point at a search space over keys, as the sweep records them."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    direction = "minimize" if metric == "val/loss" else "maximize"
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    space_path = tmp_path / f"{len(list(tmp_path.glob('*.yaml')))}-space.yaml"
    space_path.write_text(space_yaml("synthetic", keys, metric))
    study.set_user_attr("search_space", str(space_path))
    study.set_user_attr("metric", metric)
    return study, storage


def add(
    study: optuna.Study,
    params: dict,
    state: optuna.trial.TrialState,
    steps: int,
    value: float | None,
    *,
    curve: dict[int, float] | None = None,
    **attrs,
) -> None:
    """Add one finished trial with a learning curve of reports every 100 steps (none for a failed trial)."""
    last = value if value is not None and math.isfinite(value) else 0.3
    if curve is None:
        curve = {step: last * step / steps for step in range(100, steps + 1, 100)} if state != FAIL else {}
    user_attrs = {
        "steps": steps,
        "tokens": steps * TOKENS_PER_STEP,
        "duration_s": steps * 0.2,
        "trainable_params": 6144 * params.get("model.lora_r", 16),
        "total_params": 881_280,
        **attrs,
    }
    distributions = {key: DISTRIBUTIONS[key] for key in params}
    study.add_trial(
        optuna.trial.create_trial(
            params=params,
            distributions=distributions,
            value=value,
            state=state,
            intermediate_values=curve,
            user_attrs=user_attrs,
        )  # fmt: skip
    )


def make_study(
    tmp_path: Path, name: str = "synthetic", *, n_complete: int = 24, minimize: bool = False
) -> tuple[optuna.Study, str]:
    """n_complete completed trials (trial 0 the base config), 3 pruned, 1 failed; minimize: val/loss = 1 - accuracy."""
    keys = ["model.learning_rate", "model.lora_r", "model.lora_dropout"]
    study, storage = new_study(tmp_path, name, keys, metric="val/loss" if minimize else "val/letter_position_accuracy")
    rng = np.random.default_rng(0)

    def value(learning_rate: float, rank: int) -> float:
        return 1 - accuracy(learning_rate, rank) if minimize else accuracy(learning_rate, rank)

    base = {key: BASE_PARAMS[key] for key in keys}
    add(study, base, COMPLETE, FULL_STEPS, value(2e-3, 16) + (0.05 if minimize else -0.05), is_base_config=True)
    for _ in range(n_complete - 1):
        params = {
            "model.learning_rate": float(10 ** rng.uniform(-4, -2)),
            "model.lora_r": int(rng.choice([4, 8, 16])),
            "model.lora_dropout": float(rng.uniform(0, 0.2)),
        }
        add(study, params, COMPLETE, FULL_STEPS, value(params["model.learning_rate"], params["model.lora_r"]))
    for steps in (100, 200, 300):  # pruned early: 900 + 800 + 700 steps saved
        add(study, {**base, "model.learning_rate": 1.1e-4}, PRUNED, steps, None, reason="pruned")
    add(study, base, FAIL, 50, None, reason="RuntimeError: boom")
    return study, storage


def xor_study(tmp_path: Path, *, replicates: int = 1) -> optuna.Study:
    """Value depends only on whether lora_r and batch_size are both high or both low; dropout is noise-free filler."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}", direction="maximize")
    distributions = {
        "model.lora_r": optuna.distributions.CategoricalDistribution([4, 32]),
        "data.batch_size": optuna.distributions.CategoricalDistribution([16, 64]),
        "model.lora_dropout": optuna.distributions.CategoricalDistribution([0.0, 0.1]),
    }
    grid = itertools.product([4, 32], [16, 64], [0.0, 0.1], range(replicates))
    for rank, batch, dropout, _ in grid:
        value = 0.5 + 0.2 * ((rank == 32) == (batch == 64))
        params = {"model.lora_r": rank, "data.batch_size": batch, "model.lora_dropout": dropout}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    return study


def legal_study(tmp_path: Path, kind: str) -> tuple[optuna.Study, str]:
    """A study of one legal but awkward shape (LEGAL_KINDS), built the way the sweep records trials."""
    keys = {"one_param": ["model.learning_rate"], "categorical": ["model.lora_r", "data.batch_size"]}.get(
        kind, ["model.learning_rate", "model.lora_r"]
    )
    if kind == "minimize":
        return make_study(tmp_path, kind, n_complete=8, minimize=True)
    study, storage = new_study(tmp_path, kind, keys)
    rng = np.random.default_rng(1)
    lrs = [float(10 ** rng.uniform(-4, -2)) for _ in range(10)]
    trials = {
        "ties_all": [(dict(lr=lr, r=r), COMPLETE, 0.5) for lr, r in zip(lrs, [4, 8, 16] * 4)],
        "ties_top": [(dict(lr=lr, r=r), COMPLETE, 0.6 if i < 5 else accuracy(lr, r) - 0.2)
                     for i, (lr, r) in enumerate(zip(lrs, [4, 8, 16] * 4))],
        "single": [(dict(lr=2e-3, r=16), COMPLETE, 0.55)],
        "all_pruned": [(dict(lr=lr, r=4), PRUNED, None) for lr in lrs[:4]],
        "all_failed": [(dict(lr=lr, r=4), FAIL, None) for lr in lrs[:3]],
        "one_param": [(dict(lr=lr), COMPLETE, accuracy(lr, 16)) for lr in lrs],
        "categorical": [(dict(r=r, b=b), COMPLETE, 0.4 + 0.01 * r + 0.001 * b + 0.01 * k)
                        for r, b, k in itertools.product([4, 8, 16], [16, 64], range(2))],
        "nonfinite": [(dict(lr=lr, r=r), COMPLETE, v) for lr, r, v in
                      zip(lrs, [4, 8, 16] * 4, [math.inf, -math.inf, *(accuracy(lr, 8) for lr in lrs[2:])])],
    }[kind]  # fmt: skip
    names = {"lr": "model.learning_rate", "r": "model.lora_r", "b": "data.batch_size"}
    for short, state, value in trials:
        steps = FULL_STEPS if state == COMPLETE else 300
        reason = {PRUNED: "pruned at step 300", FAIL: "RuntimeError: out of memory"}.get(state)
        add(
            study,
            {names[k]: v for k, v in short.items()},
            state,
            steps,
            value,
            **({"reason": reason} if reason else {}),
        )
    if kind == "nonfinite":  # a diverged run also reports NaN along its curve
        diverged = {names["lr"]: 9e-3, names["r"]: 4}
        add(study, diverged, PRUNED, 300, None, curve={100: 0.2, 200: math.nan}, reason="val/loss is nan")
    return study, storage


# The minimised study ("minimize") has its own end-to-end report test with sharper assertions.
LEGAL_KINDS = ["ties_all", "ties_top", "single", "all_pruned", "all_failed", "one_param", "categorical", "nonfinite"]
