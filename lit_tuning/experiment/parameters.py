"""The parameters of a search space: discrete candidates or a numeric range, and how their values compare."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from lit_tuning.experiment.config import format_value


@dataclasses.dataclass(frozen=True)
class Candidates:
    """Discrete values of one parameter (the original task's HPARAM_CANDIDATES), normalized by the fit parser."""

    values: tuple[Any, ...]

    def points(self) -> list[Any]:
        """Return the values a grid visits."""
        return list(self.values)

    def count(self) -> int:
        """Return how many values a grid visits."""
        return len(self.values)

    def __str__(self) -> str:
        """Describe the parameter for error messages."""
        return f"one of {list(self.values)}"


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric interval (the original task's HPARAM_RANGE): low..high inclusive, optionally log-scaled or stepped."""

    low: int | float
    high: int | float
    kind: Literal["int", "float"]
    log: bool = False
    step: int | float | None = None

    def count(self) -> int:
        """Return how many points a stepped range has, without listing them."""
        assert self.step is not None, "only stepped ranges enumerate"
        return round((self.high - self.low) / self.step) + 1

    def points(self) -> list[int | float]:
        """Return low, low+step, ..., high (only for a stepped range)."""
        values = [self.low + index * self.step for index in range(self.count())]
        return values if self.kind == "int" else [round(value, 12) for value in values]

    def __str__(self) -> str:
        """Describe the parameter for error messages."""
        scale = ", log scale" if self.log else f", step {self.step}" if self.step is not None else ""
        return f"{self.kind} in [{self.low}, {self.high}]{scale}"

    def contains(self, value: int | float) -> bool:
        """Whether a value lies in the range and on its step grid."""
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        ratio = (value - self.low) / self.step
        return math.isclose(ratio, round(ratio), abs_tol=1e-9)


Parameter = Candidates | Range


def is_int(value: Any) -> bool:
    """Whether a YAML value is an integer (True and False are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether a YAML value is a finite int or float (booleans are not numbers)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def same_value(left: Any, right: Any) -> bool:
    """Compare values as the CLI would write them (32 and 32.0 differ in type but are the same lora_alpha)."""
    if is_number(left) and is_number(right):
        return math.isclose(left, right, rel_tol=1e-12)
    return format_value(left) == format_value(right)
