"""SpellingDataModule: "What is letter i of W?" -> " x" examples from a word list, split by word."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import lightning.pytorch as pl
import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveInt
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from lit_tuning.train import warm
from lit_tuning.train.base_model import letter_token_ids, resolve_model_path
from lit_tuning.train.batching import pad_right
from lit_tuning.train.metrics import best_constant_per_position_accuracy, chance_accuracy
from lit_tuning.train.problems import ArgumentProblem
from lit_tuning.train.words import load_words

DEFAULT_PROMPT = "What is letter {position} of {word}? Answer:"


@dataclasses.dataclass(frozen=True)
class WordSplit:
    """Disjoint train/val/test word lists."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def split_words(words: tuple[str, ...], val_fraction: float, test_fraction: float, seed: int) -> WordSplit:
    """Shuffle words with a seed and cut them into disjoint train/val/test lists."""
    if val_fraction + test_fraction >= 1:
        raise ArgumentProblem(
            "data.val_fraction",
            f"val_fraction + test_fraction = {val_fraction} + {test_fraction}; allowed: a sum below 1",
        )
    shuffled = sorted(set(words))
    random.Random(seed).shuffle(shuffled)
    n_val, n_test = round(len(shuffled) * val_fraction), round(len(shuffled) * test_fraction)
    for key, count, fraction in (
        ("data.val_fraction", n_val, val_fraction),
        ("data.test_fraction", n_test, test_fraction),
    ):
        if count == 0:
            raise ArgumentProblem(
                key, f"{fraction} of {len(shuffled)} words is no word; allowed: a share that holds at least one word"
            )
    if n_val + n_test >= len(shuffled):
        raise ArgumentProblem(
            "data.val_fraction",
            f"{n_val} validation + {n_test} test words leave none of {len(shuffled)} to train on; "
            "allowed: smaller fractions or more data.num_words",
        )
    return WordSplit(
        train=tuple(shuffled[n_val + n_test :]),
        val=tuple(shuffled[:n_val]),
        test=tuple(shuffled[n_val : n_val + n_test]),
    )


def check_prompt(prompt: str) -> None:
    """Refuse a question template that lacks {position} or {word} or that str.format cannot fill."""
    if "{position}" not in prompt or "{word}" not in prompt:
        raise ArgumentProblem("data.prompt", f"{prompt!r} lacks {{position}} or {{word}}; allowed: a text with both")
    try:
        prompt.format(position=1, word="word")
    except (KeyError, IndexError, ValueError) as error:
        raise ArgumentProblem(
            "data.prompt",
            f"{prompt!r} cannot be filled ({type(error).__name__}: {error}); "
            "allowed: only {position} and {word} as fields (write {{ and }} for literal braces)",
        ) from None


def word_split(
    num_words: int, min_word_length: int, max_word_length: int, val_fraction: float, test_fraction: float, seed: int
) -> WordSplit:
    """Return the train/val/test split of the word list, or raise ArgumentProblem naming the key that cannot work."""
    if min_word_length > max_word_length:
        raise ArgumentProblem(
            "data.min_word_length",
            f"{min_word_length} is above data.max_word_length = {max_word_length}; allowed: min <= max",
        )
    try:
        words = load_words(num_words, min_word_length, max_word_length)
    except ValueError as error:  # wordfreq has too few words of these lengths
        raise ArgumentProblem("data.num_words", f"{error}; allowed: fewer words or a wider length range") from None
    return split_words(words, val_fraction, test_fraction, seed)


class SpellingDataset(Dataset):
    """Every (word, letter position) pair of a word list, tokenized as prompt ids plus one answer id."""

    def __init__(self, words: tuple[str, ...], tokenizer: PreTrainedTokenizerBase, prompt: str) -> None:
        self.examples: list[tuple[list[int], int]] = []
        letter_ids = letter_token_ids(tokenizer)
        for word in words:
            for position, letter in enumerate(word, start=1):
                prompt_ids = tokenizer.encode(prompt.format(position=position, word=word))
                self.examples.append((prompt_ids, letter_ids[letter]))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.examples[index]


class PadCollator:
    """Right-pads prompts into a batch and records where each prompt ends."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_right([ids for ids, _ in examples], self.pad_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "last_index": attention_mask.sum(dim=1) - 1,  # the answer is predicted from the prompt's last token
            "answer_ids": torch.tensor([answer for _, answer in examples]),
        }


class SpellingDataModule(pl.LightningDataModule):
    """Letter-position questions on wordfreq words, split train/val/test by word so evaluation words are unseen."""

    def __init__(
        self,
        model_name_or_path: str = "embedded:tiny",
        num_words: PositiveInt = 2000,
        min_word_length: PositiveInt = 3,
        max_word_length: PositiveInt = 8,
        val_fraction: ClosedUnitInterval = 0.1,
        test_fraction: ClosedUnitInterval = 0.1,
        split_seed: int = 0,
        batch_size: PositiveInt = 64,
        eval_batch_size: PositiveInt = 256,
        num_workers: NonNegativeInt = 0,
        prompt: str = DEFAULT_PROMPT,
    ) -> None:
        """Build the data for a spelling fine-tune.

        Args:
            model_name_or_path: the model whose tokenizer encodes prompts (linked from model.model_name_or_path).
            num_words: how many of the most frequent English a-z words to use.
            min_word_length: shortest word, in letters.
            max_word_length: longest word, in letters.
            val_fraction: share of words held out for validation.
            test_fraction: share of words held out for testing.
            split_seed: seed of the word shuffle that makes the split.
            batch_size: questions per training batch.
            eval_batch_size: questions per validation/test batch.
            num_workers: DataLoader worker processes.
            prompt: question template with {position} (1-based) and {word}.
        """
        super().__init__()
        check_prompt(prompt)
        self.save_hyperparameters()
        self.split = word_split(num_words, min_word_length, max_word_length, val_fraction, test_fraction, split_seed)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.datasets: dict[str, SpellingDataset] = {}

    def setup(self, stage: str) -> None:
        """Load the tokenizer, tokenize the splits the stage needs and record the split in the run directory."""
        if self.tokenizer is None:
            self.tokenizer = warm.load_tokenizer(resolve_model_path(self.hparams.model_name_or_path))
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}[stage]
        for name in needed:
            if name not in self.datasets:
                words, prompt = getattr(self.split, name), self.hparams.prompt
                key = (self.tokenizer.name_or_path, words, prompt)  # a warm worker tokenizes each split once
                self.datasets[name] = warm.cached(key, lambda: SpellingDataset(words, self.tokenizer, prompt))
        # trainer.log_dir is a broadcast under DDP: every rank reads it, once, or the ranks' collectives mismatch.
        log_dir = self.trainer.log_dir if stage == "fit" and self.trainer is not None else None
        if log_dir and self.trainer.is_global_zero:
            self.save_split(Path(log_dir) / "data_split.json")

    def baselines(self, eval_split: str = "val") -> dict[str, float]:
        """Return the reference accuracies every result should be read against."""
        return {
            "baseline/chance": chance_accuracy(),
            "baseline/best_constant_per_position": best_constant_per_position_accuracy(
                self.split.train, getattr(self.split, eval_split)
            ),
        }

    def save_split(self, path: Path) -> None:
        """Write the word split and how it was made to a JSON file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"seed": self.hparams.split_seed, **dataclasses.asdict(self.split)}
        path.write_text(json.dumps(record, indent=1) + "\n")

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        assert self.tokenizer is not None, "setup() must run before the dataloaders"
        pad_id = self.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else self.tokenizer.eos_token_id
        return DataLoader(
            self.datasets[name],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=PadCollator(pad_id if pad_id is not None else 0),
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training questions."""
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation questions, in order."""
        return self._loader("val", self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test questions, in order."""
        return self._loader("test", self.hparams.eval_batch_size, shuffle=False)
