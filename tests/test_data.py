"""SpellingDataModule: word split, prompts and answers, single-token letters, padding."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from lit_tuning.train.base_model import letter_token_ids
from lit_tuning.train.data import PadCollator, SpellingDataModule, SpellingDataset, split_words
from lit_tuning.train.words import ALPHABET, load_words


def test_words_are_lowercase_ascii_in_length_range():
    words = load_words(500, 3, 8)
    assert len(words) == len(set(words)) == 500
    assert all(3 <= len(w) <= 8 and set(w) <= set(ALPHABET) for w in words)
    assert words[0] == "the"  # frequency order


def test_split_is_disjoint_complete_and_seeded():
    words = load_words(300)
    split = split_words(words, 0.1, 0.2, seed=7)
    train, val, test = map(set, (split.train, split.val, split.test))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(words)
    assert (len(val), len(test)) == (30, 60)
    assert split_words(words, 0.1, 0.2, seed=7) == split
    assert split_words(words, 0.1, 0.2, seed=8).val != split.val


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.0, 0.1), (0.001, 0.1)])
def test_split_refuses_impossible_fractions(val, test):
    with pytest.raises(ValueError):
        split_words(load_words(300), val, test, seed=0)


def test_every_answer_letter_is_one_token(micro_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(micro_model_dir)
    ids = letter_token_ids(tokenizer)
    assert len(set(ids.values())) == 26
    assert all(tokenizer.decode([ids[letter]]) == " " + letter for letter in ALPHABET)


def test_prompts_and_answers_match_the_words(micro_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(micro_model_dir)
    dataset = SpellingDataset(("apple", "dog"), tokenizer, "What is letter {position} of {word}? Answer:")
    assert len(dataset) == 8  # one question per letter
    decoded = [(tokenizer.decode(ids), tokenizer.decode([answer])) for ids, answer in dataset.examples]
    assert decoded[2] == ("What is letter 3 of apple? Answer:", " p")
    assert decoded[5] == ("What is letter 1 of dog? Answer:", " d")
    assert [answer.strip() for _, answer in decoded] == list("appledog")


def test_collator_pads_right_and_points_at_the_last_prompt_token():
    batch = PadCollator(pad_id=0)([([5, 6, 7], 11), ([8], 12)])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["last_index"].tolist() == [2, 0]
    # the loss is taken only on these answer ids: nothing else in the batch is a target
    assert batch["answer_ids"].tolist() == [11, 12]


def test_datamodule_loaders_cover_each_split(micro_model_dir: Path):
    dm = SpellingDataModule(model_name_or_path="embedded:micro", num_words=300, batch_size=16)
    dm.setup("fit")
    train_questions = sum(len(w) for w in dm.split.train)
    assert len(dm.datasets["train"]) == train_questions
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 16
    assert batch["answer_ids"].dtype == torch.long
    baselines = dm.baselines()
    assert baselines["baseline/chance"] == pytest.approx(1 / 26)
    assert 0.05 < baselines["baseline/best_constant_per_position"] < 0.4


def test_prompt_without_placeholders_is_refused():
    with pytest.raises(ValueError, match=r"data.prompt.*lacks \{position\} or \{word\}"):
        SpellingDataModule(model_name_or_path="embedded:micro", num_words=300, prompt="Spell it")
