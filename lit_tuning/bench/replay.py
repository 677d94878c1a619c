"""Replay a search strategy on the benchmark table through Optuna's own samplers, pruners and study loop.

A replayed trial reads its config's recorded curve instead of training: each validation is reported to the
pruner, and the compute it counts is the training steps (and tokens) the run would really have spent.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import optuna

from lit_tuning.bench.curves import Config, Curve, CurveTable
from lit_tuning.experiment import strategies as sweep_strategies

SAMPLERS = ("oat", "grid", "random", "tpe", "gp", "qmc", "cmaes")
PRUNERS = ("none", "median", "sha", "hyperband")


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A sampler (or a fixed design) with a pruner, or the 'train all briefly, then continue the top k' baseline."""

    name: str
    sampler: str  # one of SAMPLERS
    pruner: str = "none"  # one of PRUNERS
    brief_steps: int | None = None  # brief-then-top-k: every config trains this long first ...
    top_k: int = 0  # ... then the k best continue to the end
    from_checkpoint: bool = True  # continued runs resume at brief_steps (False: they restart at step 0)


@dataclasses.dataclass(frozen=True)
class Event:
    """The state of one replay after a trial ended: compute spent so far and the true value of the incumbent."""

    trial: int
    steps: int  # training steps run so far, over all trials
    tokens: int
    incumbent: Config | None  # the config the search would report as best (best observed finished run)
    value: float | None  # that config's true (seed-averaged) final value in the table


def make_pruner(name: str, table: CurveTable) -> optuna.pruners.BasePruner:
    """Optuna's pruner for a strategy, on the table's step grid (the first validation is the smallest budget)."""
    first, last = _first_step(table), _last_step(table)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":  # warm-up 2 validations, then every 3 (the default study before the benchmark)
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2 * first, interval_steps=3 * first)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=last, reduction_factor=3)
    raise ValueError(f"pruner {name!r} is unknown; allowed: {', '.join(PRUNERS)}")


def make_sampler(name: str, table: CurveTable, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's sampler for a strategy; the axes are ordinal indices so that GP, QMC and CMA-ES see an order."""
    if name == "grid":
        return optuna.samplers.GridSampler({key: list(range(len(v))) for key, v in table.axes.items()}, seed=seed)
    samplers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "oat": lambda: optuna.samplers.RandomSampler(seed=seed),  # only runs the enqueued design
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
        "qmc": lambda: sweep_strategies.SAMPLERS["qmc"](seed=seed),  # the sweep's own: what ships is replayed
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    }
    if name not in samplers:
        raise ValueError(f"sampler {name!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    return samplers[name]()


class Replay:
    """One seeded replay of one strategy: asks Optuna for configs, feeds it recorded curves, counts compute."""

    def __init__(self, table: CurveTable, strategy: Strategy, seed: int) -> None:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.table, self.strategy, self.seed = table, strategy, seed
        self.rng = random.Random(seed)  # which recorded seed a run of a multi-seed config gets
        self.study = optuna.create_study(
            study_name=f"replay-{strategy.name}-{seed}",  # Hyperband assigns brackets by a hash of the study name
            direction=table.direction,
            sampler=make_sampler(strategy.sampler, table, seed),
            pruner=make_pruner(strategy.pruner, table),
        )
        self.steps = self.tokens = 0
        self.observed: dict[int, tuple[float, Config]] = {}  # finished trial -> (observed final value, config)
        self.events: list[Event] = []
        self.axes = list(table.axes.items())
        self.last_curve: Curve | None = None  # the recorded run the latest trial replayed

    def run(self, budget_steps: int) -> list[Event]:
        """Run trials until the budget of training steps is spent or the strategy's design is done."""
        if self.strategy.brief_steps is not None:
            self._brief_then_top_k()
        elif self.strategy.sampler == "oat":
            self._one_at_a_time(budget_steps)
        else:
            limit = len(self.table.curves) if self.strategy.sampler == "grid" else None
            while self.steps < budget_steps and (limit is None or len(self.study.trials) < limit):
                self._trial()
        return self.events

    def _trial(
        self, config: Config | None = None, *, until: int | None = None, start: int = 0, curve: Curve | None = None
    ) -> float | None:
        """Ask, run one recorded curve (steps start..until) with pruning, tell; return the last value or None."""
        if config is not None:
            self.study.enqueue_trial(self._params(config))
        outcome: list[tuple[int, float | None]] = []

        def objective(trial: optuna.Trial) -> float:
            # Optuna's own loop (GridSampler stops the study from inside it once the grid is exhausted).
            chosen = tuple(values[trial.suggest_int(key, 0, len(values) - 1)] for key, values in self.axes)
            value = self._run_curve(trial, chosen, curve or self.rng.choice(self.table.curves[chosen]), start, until)
            outcome.append((trial.number, value))
            if value is None:
                raise optuna.TrialPruned()
            self.observed[trial.number] = (value, chosen)
            return value

        self.study.optimize(objective, n_trials=1, catch=())
        number, value = outcome[-1]
        self._record(number)
        return value

    def _run_curve(
        self, trial: optuna.Trial, config: Config, curve: Curve, start: int, until: int | None
    ) -> float | None:
        """Report a recorded curve's validations from `start` to `until`; return the last value, None if pruned."""
        self.last_curve = curve
        value = None
        previous_steps, previous_tokens = _position(curve, start)
        for step, tokens, value in zip(curve.steps, curve.tokens, curve.values, strict=True):
            if step <= start:
                continue
            if until is not None and step > until:
                break
            self.steps += step - previous_steps
            self.tokens += tokens - previous_tokens
            previous_steps, previous_tokens = step, tokens
            trial.report(value, step)
            if trial.should_prune():
                return None
        return value

    def _one_at_a_time(self, budget_steps: int) -> None:
        """The original task's design: the centre, each other value of one axis at a time (in random order),
        then the combination of each axis's best value, if it is new."""
        centre = _centre(self.table)
        others = [
            tuple(value if axis == index else centre[axis] for axis in range(len(centre)))
            for index, values in enumerate(self.table.axes.values())
            for value in values
            if value != centre[index]
        ]
        self.rng.shuffle(others)
        results: dict[Config, float] = {}
        for config in [centre, *others]:
            if self.steps >= budget_steps:
                return
            results[config] = self._trial(config)
        sign = 1 if self.table.direction == "maximize" else -1
        combined = tuple(
            max((c for c in results if all(c[a] == centre[a] for a in range(len(c)) if a != index)),
                key=lambda c: sign * results[c])[index]
            for index in range(len(centre))
        )  # fmt: skip
        if combined not in results and self.steps < budget_steps:
            self._trial(combined)

    def _brief_then_top_k(self) -> None:
        """Every config in random order for brief_steps, then the top k continue (from their checkpoint)."""
        brief = self.strategy.brief_steps
        configs = list(self.table.curves)
        self.rng.shuffle(configs)
        briefly: list[tuple[float, Config, Curve]] = []
        for config in configs:
            value = self._trial(config, until=brief)
            briefly.append((value, config, self.last_curve))  # a continued run goes on with the same seed
            self.observed.clear()  # a brief value is not a result the search would report
            self.events[-1] = dataclasses.replace(self.events[-1], incumbent=None, value=None)
        sign = 1 if self.table.direction == "maximize" else -1
        for _value, config, curve in sorted(briefly, key=lambda item: -sign * item[0])[: self.strategy.top_k]:
            self._trial(config, start=brief if self.strategy.from_checkpoint else 0, curve=curve)

    def _params(self, config: Config) -> dict[str, int]:
        return {key: values.index(value) for (key, values), value in zip(self.table.axes.items(), config, strict=True)}

    def _record(self, number: int) -> None:
        incumbent = None
        if self.observed:
            sign = 1 if self.table.direction == "maximize" else -1
            incumbent = max(self.observed.values(), key=lambda item: sign * item[0])[1]
        value = self.table.final(incumbent) if incumbent is not None else None
        self.events.append(Event(number, self.steps, self.tokens, incumbent, value))


def _first_step(table: CurveTable) -> int:
    return min(runs[0].steps[0] for runs in table.curves.values())


def _last_step(table: CurveTable) -> int:
    return max(runs[0].steps[-1] for runs in table.curves.values())


def _position(curve: Curve, start: int) -> tuple[int, int]:
    """Steps and tokens already spent when a run resumes at step `start` (0: a fresh run)."""
    if start == 0:
        return 0, 0
    return start, curve.tokens[curve.steps.index(start)]


def _centre(table: CurveTable) -> Config:
    """The middle value of each axis (the lower middle for an even count): the one-at-a-time design's base point."""
    return tuple(values[(len(values) - 1) // 2] for values in table.axes.values())
