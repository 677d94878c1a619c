"""Nested config data as plain Python: dotted-key flattening and parser-typed values turned into builtins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys: {"model": {"lora_r": 8}} -> {"model.lora_r": 8}.

    Lists, scalars and empty mappings are leaves; a non-mapping document has no keys.
    """
    if not isinstance(config, Mapping):
        return {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def plain(value: Any) -> Any:
    """Turn parser-typed values (jsonargparse's PositiveInt is an int subclass) into plain Python data."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, np.generic):  # a numpy scalar from a pandas table: its Python value, not its text
        return value.item()
    for base_type in (int, float, str):
        if isinstance(value, base_type):
            return base_type(value)
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value
