"""The embedded base model: build, cache, rebuild on recipe change, model references."""

import dataclasses
import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_tuning.train.base_model import RECIPES, check_model_reference, ensure_built, resolve_model_path, spelling_line


def test_micro_build_is_a_loadable_save_pretrained_dir(micro_model_dir: Path):
    summary = json.loads((micro_model_dir / "recipe.json").read_text())
    assert summary["recipe"] == dataclasses.asdict(RECIPES["micro"])
    # pretraining taught it to spell far above chance (1/26)
    assert summary["spelling_accuracy"] > 0.3
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
