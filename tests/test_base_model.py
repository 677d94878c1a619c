"""The embedded base model: build, cache, rebuild on recipe change, model references."""

import dataclasses
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
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
