"""Warm worker state: the frozen base model, tokenizer and tokenized splits kept in memory across a worker's trials.

A sweep worker runs many trials of one base model. Cold, each trial reloads the base weights from disk (seconds to
minutes for a 135M-0.5B model) and re-tokenizes the data. Warm, the worker keeps them and every trial only builds
its own adapter, optimizer and trainer, through the same `fit` path. Off unless a worker calls ``enable()``, so a
plain `fit` always loads cold.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_KEPT_DATASETS = 6


@dataclasses.dataclass
class _WarmState:
    enabled: bool = False
    base_key: tuple[str, str] | None = None
    base: PreTrainedModel | None = None
    adapted: PeftModel | None = None  # the last trial's wrapping of the base, removed before the next trial
    tokenizers: dict[str, PreTrainedTokenizerBase] = dataclasses.field(default_factory=dict)
    datasets: dict[Hashable, Any] = dataclasses.field(default_factory=dict)
    loads: int = 0  # base models read from disk in this process (a warm worker reads each once)


_STATE = _WarmState()


def enable(on: bool = True) -> None:
    """Keep (or, with on=False, stop keeping and drop) base models, tokenizers and splits across fits."""
    global _STATE
    _STATE = _WarmState(enabled=on, loads=_STATE.loads)


def is_enabled() -> bool:
    """Tell whether this process keeps its base model warm."""
    return _STATE.enabled


def base_loads() -> int:
    """Return how many times this process read a base model from disk."""
    return _STATE.loads


def load_base_model(path: str, dtype: torch.dtype | None) -> PreTrainedModel:
    """Return the base model at path: read from disk, or (warm) the kept one with the last trial's adapters removed."""
    key = (path, str(dtype))
    if _STATE.enabled and _STATE.base_key == key and _STATE.base is not None:
        if _STATE.adapted is not None:
            _STATE.adapted.unload()  # swaps each LoRA layer back for its untouched base layer
            _STATE.adapted = None
        if not any(isinstance(module, BaseTunerLayer) for module in _STATE.base.modules()):
            return _STATE.base.eval()  # the mode from_pretrained returns, whatever the last trial left
        log.warning("the kept base model still carries adapters; reloading it from %s", path)
    # Loading must not draw from the global RNG: a warm trial (no load) then initialises its adapter from
    # exactly the same random state as a cold one.
    with torch.random.fork_rng(devices=[]):
        base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    _STATE.loads += 1
    if _STATE.enabled:
        _STATE.base_key, _STATE.base, _STATE.adapted = key, base, None  # one base at a time bounds the memory
    return base


def adopt(adapted: PeftModel) -> None:
    """Remember the trial's adapter wrapping of the kept base, so the next trial can remove it."""
    if _STATE.enabled and adapted.get_base_model() is _STATE.base:
        _STATE.adapted = adapted


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Return the tokenizer at path (kept across fits when warm)."""
    if not _STATE.enabled:
        return AutoTokenizer.from_pretrained(path)
    if path not in _STATE.tokenizers:
        _STATE.tokenizers = {path: AutoTokenizer.from_pretrained(path)}
    return _STATE.tokenizers[path]


def cached(key: Hashable, build: Callable[[], T]) -> T:
    """Return build() (kept under key across fits when warm): tokenized splits are identical across trials."""
    if not _STATE.enabled:
        return build()
    if key not in _STATE.datasets:
        if len(_STATE.datasets) >= MAX_KEPT_DATASETS:  # a space that searches the data itself: keep the newest
            _STATE.datasets.pop(next(iter(_STATE.datasets)))
        _STATE.datasets[key] = build()
    return _STATE.datasets[key]
