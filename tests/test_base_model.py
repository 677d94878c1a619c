"""The embedded base model: build, cache, rebuild on recipe change, model references."""

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sweep_helpers import alive, processes_naming
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_tuning.train.base_model import (
    RECIPES,
    _lookup_accuracy,
    check_model_reference,
    ensure_built,
    resolve_model_path,
    spelling_corpus,
    spelling_line,
)


def test_micro_build_is_a_loadable_save_pretrained_dir(micro_model_dir: Path):
    summary = json.loads((micro_model_dir / "recipe.json").read_text())
    assert summary["recipe"] == dataclasses.asdict(RECIPES["micro"])
    # pretraining taught it to spell far above chance (1/26)
    assert summary["spelling_accuracy"] > 0.3
    assert 0.0 <= summary["lookup_accuracy"] <= 1.0
    model = AutoModelForCausalLM.from_pretrained(micro_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(micro_model_dir)
    assert model.config.model_type == "llama"
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


def test_cached_build_is_reused(micro_model_dir: Path):
    stamp = (micro_model_dir / "recipe.json").stat().st_mtime_ns
    assert resolve_model_path("embedded:micro") == str(micro_model_dir)
    assert (micro_model_dir / "recipe.json").stat().st_mtime_ns == stamp


def test_a_changed_recipe_gets_its_own_build(tmp_path: Path):
    small = dataclasses.replace(RECIPES["micro"], num_words=60, pretrain_steps=5, vocab_size=320)
    other = dataclasses.replace(small, seed=1)
    assert small.fingerprint() != other.fingerprint()
    first, second = ensure_built("x", small, root=tmp_path), ensure_built("x", other, root=tmp_path)
    assert first != second and (first / "recipe.json").is_file() and (second / "recipe.json").is_file()
    assert not list(tmp_path.glob(".x-*")), "no staging directory is left behind"


def test_spelling_line_indexes_letters():
    assert spelling_line("dog") == " dog: 1 d 2 o 3 g"
    assert spelling_line("dog", [3, 1, 2]) == " dog: 3 g 1 d 2 o"


def test_spelling_corpus_adds_shuffled_orders_that_keep_each_letter_at_its_index():
    lines = spelling_corpus(("apple", "dog"), 3, random.Random(0))
    assert len(lines) == 8 and lines[0] == spelling_line("apple") and lines[4] == spelling_line("dog")
    shuffled = lines[1:4]
    for line in shuffled:
        pairs = line.split(": ")[1].split(" ")
        indexed = dict(zip(map(int, pairs[::2]), pairs[1::2], strict=True))
        assert indexed == {1: "a", 2: "p", 3: "p", 4: "l", 5: "e"}
    assert len(set(shuffled)) > 1, "orders are drawn at random, not repeated"
    assert spelling_corpus(("apple",), 0, random.Random(0)) == [spelling_line("apple")]


def _oracle(tokenizer, wrong_positions: set[int]):
    """A stand-in model that names letter k of ' word: k' at the last real token (off by one where told)."""

    def model(input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, len(tokenizer))
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
            word, position = tokenizer.decode(ids[mask.bool()]).strip().split(": ")
            index = int(position) - 1 + (int(position) in wrong_positions)
            letter = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + word[index % len(word)]))[0]
            logits[row, int(mask.sum()) - 1, letter] = 1.0
        return SimpleNamespace(logits=logits)

    return model


def test_lookup_accuracy_counts_the_letter_named_after_word_and_position(micro_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(micro_model_dir)
    words = ("apple", "dog", "string")  # 14 (word, position) pairs of unequal prompt lengths: padding matters
    assert _lookup_accuracy(_oracle(tokenizer, set()), tokenizer, words) == 1.0
    assert _lookup_accuracy(_oracle(tokenizer, {1}), tokenizer, words) == pytest.approx(11 / 14)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("embedded:huge", "unknown embedded base model 'embedded:huge'; allowed: embedded:tiny, embedded:micro"),
        ("./no/such/dir", "does not exist"),
        ("/tmp", "has no config.json"),
    ],
)
def test_bad_model_references_are_explained(reference: str, message: str):
    assert message in check_model_reference(reference)


def test_hub_ids_and_embedded_names_pass_the_check():
    assert check_model_reference("HuggingFaceTB/SmolLM2-135M") is None
    assert check_model_reference("embedded:tiny") is None


def _build_in_child(recipe_json: str, root: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a process that builds the recipe under root, as a sweep worker on some machine would."""
    code = (
        "import json, sys; from pathlib import Path; from lit_tuning.train.base_model import BaseModelRecipe, "
        "ensure_built; ensure_built('x', BaseModelRecipe(**json.loads(sys.argv[1])), root=Path(sys.argv[2]))"
    )
    return subprocess.Popen([sys.executable, "-c", code, recipe_json, str(root)], env={**os.environ, **env})


def test_machines_with_different_vector_units_build_the_same_weights(tmp_path: Path):
    """AVX2 and AVX-512 kernels (MKL's and PyTorch's) round differently; the pinned build must not depend on them."""
    recipe = dataclasses.replace(RECIPES["micro"], num_words=60, pretrain_steps=40, vocab_size=320)
    machines = {
        "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OMP_NUM_THREADS": "2"},
        "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512", "OMP_NUM_THREADS": "1"},
    }
    for name, env in machines.items():
        assert _build_in_child(json.dumps(dataclasses.asdict(recipe)), tmp_path / name, env).wait(timeout=300) == 0
    weights = [next((tmp_path / name / "base_models").glob("x-*/model.safetensors")).read_bytes() for name in machines]
    assert weights[0] == weights[1]


def test_a_failed_build_raises_and_leaves_nothing(tmp_path: Path):
    broken = dataclasses.replace(RECIPES["micro"], num_words=60, pretrain_steps=5, vocab_size=40)  # letters split
    with pytest.raises(RuntimeError, match="building the embedded base model failed"):
        ensure_built("x", broken, root=tmp_path)
    assert not (tmp_path / "base_models").exists()
    assert not list(tmp_path.glob(".x-*")), "no staging directory is left behind"


def test_killing_the_process_that_builds_stops_the_build(tmp_path: Path):
    endless = dataclasses.replace(RECIPES["micro"], num_words=60, pretrain_steps=10**7, vocab_size=320)
    parent = _build_in_child(json.dumps(dataclasses.asdict(endless)), tmp_path, {})
    try:
        deadline = time.monotonic() + 120
        while not (builders := processes_naming("lit_tuning.train.base_model", str(tmp_path))):
            assert time.monotonic() < deadline, "the build's child process never started"
            time.sleep(0.2)
    finally:
        parent.kill()  # also when no child showed up: an endless build must not outlive the test
        parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while alive(builders[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(builders[0])
