"""Real-model-shaped base models with random weights (SmolLM2-135M, Qwen2.5-0.5B), built offline for benchmarks.

No model hub here: the shapes come from each model's published transformers config, the weights are random and
the tokenizer is a BPE trained here on the task's words (its ids are a subset of the real vocabulary, so the
embedding and LM head keep their real size). Throughput, memory and per-trial cost match the real model;
accuracy means nothing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, Qwen2Config, Qwen2ForCausalLM

from lit_tuning.files import file_lock
from lit_tuning.train.base_model import cache_root, train_tokenizer
from lit_tuning.train.words import load_words

# The published configs' shape fields (config.json of HuggingFaceTB/SmolLM2-135M and Qwen/Qwen2.5-0.5B).
SHAPES: dict[str, tuple[type[PretrainedConfig], type[torch.nn.Module], dict]] = {
    "smollm2-135m": (
        LlamaConfig,
        LlamaForCausalLM,
        {
            "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
            "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        },
    ),
    "qwen2.5-0.5b": (
        Qwen2Config,
        Qwen2ForCausalLM,
        {
            "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        },
    ),
}  # fmt: skip
TOKENIZER_WORDS, TOKENIZER_VOCAB = 5000, 4096  # the task's words (data.num_words of the model configs) as tokens
# A few-layer, narrow version of any shape (same architecture and vocabulary): the smoke runs of the benchmarks.
SMOKE_SHRINK = {
    "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2,
}  # fmt: skip
MARKER = "shaped.json"  # written last: its presence marks a complete build


def shaped_config(name: str, tokenizer_vocab: int, **overrides: int) -> PretrainedConfig:
    """Return the transformers config of a shaped model (overrides shrink it for tests)."""
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; allowed: {', '.join(SHAPES)}")
    config_class, _, fields = SHAPES[name]
    fields = {**fields, **overrides}
    fields["vocab_size"] = max(fields["vocab_size"], tokenizer_vocab)
    return config_class(**fields)


def ensure_shaped_model(name: str, root: Path | None = None, **overrides: int) -> Path:
    """Return a save_pretrained directory of the named shape with random weights, building it once (cached)."""
    tag = "-".join(f"{key}{value}" for key, value in sorted(overrides.items()))
    target = (root or cache_root()) / "shaped_models" / (f"{name}-{tag}" if tag else name)
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / MARKER).is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            tokenizer = train_tokenizer(load_words(TOKENIZER_WORDS), TOKENIZER_VOCAB)
            config = shaped_config(name, len(tokenizer), **overrides)
            config.pad_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
            config.eos_token_id = tokenizer.eos_token_id
            torch.manual_seed(0)
            model = SHAPES[name][1](config)
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            parameters = sum(p.numel() for p in model.parameters())
            (staging / MARKER).write_text(json.dumps({"shape": name, "parameters": parameters, **overrides}) + "\n")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def parameter_count(model_dir: Path) -> int:
    """Return the parameter count recorded when the shaped model was built."""
    return int(json.loads((model_dir / MARKER).read_text())["parameters"])
