"""Builds, caches and resolves the embedded offline base model: a tiny Llama that knows how to spell."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lit_tuning.files import file_lock
from lit_tuning.processes import die_with_parent
from lit_tuning.train.batching import pad_right
from lit_tuning.train.schedules import lr_multiplier
from lit_tuning.train.words import ALPHABET, load_words, zipf_frequency

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
# Bump when the build code changes what a recipe produces, so cached models are rebuilt.
BUILD_CODE_VERSION = 3
# The build runs in a child process with these settings, so that every machine builds the same weights: one
# thread (reduction order) and one code path whatever the CPU's vector units. Without them, builds of one recipe
# on AVX-512 and AVX2 kernels differed by up to 0.09 per weight after 300 steps (float64 training too), and the
# same LoRA config scored 0.82 on one machine's build and 0.76 on another's.
PINNED_NUMERICS = {
    "ATEN_CPU_CAPABILITY": "default",  # PyTorch's own kernels without their AVX2/AVX-512 variants
    "MKL_CBWR": "COMPATIBLE",  # MKL's reproducible mode: one code path on Intel and AMD processors
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


@dataclasses.dataclass(frozen=True)
class BaseModelRecipe:
    """Everything that determines an embedded base model; its hash names the cache entry."""

    num_words: int = 2000  # words it learns to spell (wordfreq top-N, a-z, 3-8 letters)
    min_word_length: int = 3
    max_word_length: int = 8
    vocab_size: int = 2048  # BPE vocabulary: frequent words become single tokens
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    pretrain_steps: int = 1000  # full fine-tune steps on the indexed spelling corpus
    letter_orders: int = 0  # extra spellings per word with the positions shuffled (' apple: 3 p 1 a ...')
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0

    def fingerprint(self) -> str:
        """Return a short hash of the recipe and the build code version."""
        payload = json.dumps({"recipe": dataclasses.asdict(self), "code": BUILD_CODE_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


RECIPES: dict[str, BaseModelRecipe] = {
    # The offline default: ~0.8M parameters, ~13 CPU-minutes to build (pinned numerics). Each word is also spelled in 8
    # shuffled position orders, so the model can name letter k directly (lookup accuracy 0.9995); in-order
    # spelling alone left the LoRA task's held-out accuracy near 0.57 however it was tuned.
    "tiny": BaseModelRecipe(letter_orders=8, pretrain_steps=3000),
    # For unit tests: builds in seconds; spells its 300 words less reliably.
    "micro": BaseModelRecipe(
        num_words=300, vocab_size=512, hidden_size=64, intermediate_size=256, pretrain_steps=300, batch_size=32
    ),
}


def cache_root() -> Path:
    """Return the directory where built base models are cached ($LIT_TUNING_CACHE or ~/.cache/lit_tuning)."""
    return Path(os.environ.get("LIT_TUNING_CACHE", Path.home() / ".cache" / "lit_tuning")).expanduser()


def is_embedded(name_or_path: str) -> bool:
    """Tell whether a model reference names an embedded base model (``embedded:<recipe>``)."""
    return name_or_path.startswith(EMBEDDED_PREFIX)


def looks_like_local_path(name_or_path: str) -> bool:
    """Tell whether a model reference is meant as a filesystem path rather than a hub id."""
    return name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or os.path.exists(name_or_path)


def check_model_reference(name_or_path: str) -> str | None:
    """Return an error message if the model reference cannot be loaded, else None (no loading, no download)."""
    if is_embedded(name_or_path):
        recipe = name_or_path[len(EMBEDDED_PREFIX) :]
        if recipe not in RECIPES:
            return f"unknown embedded base model {name_or_path!r}; allowed: " + ", ".join(
                EMBEDDED_PREFIX + name for name in RECIPES
            )
        return None
    if looks_like_local_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            return f"model path {name_or_path!r} does not exist or is not a directory"
        if not (path / "config.json").is_file():
            return f"model path {name_or_path!r} has no config.json (expected a save_pretrained directory)"
    return None


def resolve_model_path(name_or_path: str) -> str:
    """Turn a model reference into something ``from_pretrained`` accepts, building embedded models on first use."""
    if not is_embedded(name_or_path):
        return str(Path(name_or_path).expanduser()) if looks_like_local_path(name_or_path) else name_or_path
    error = check_model_reference(name_or_path)
    if error:
        raise ValueError(error)
    name = name_or_path[len(EMBEDDED_PREFIX) :]
    return str(ensure_built(name, RECIPES[name]))


def model_identity(name_or_path: str) -> str:
    """Name the weights a reference loads: an embedded model's cache entry (recipe and build code) and, once built, a
    digest of its weights (`tiny-<recipe hash>@<weights hash>`: whether two CPUs build the same weights is not
    assumed); else the reference itself."""
    name = name_or_path[len(EMBEDDED_PREFIX) :]
    if not (is_embedded(name_or_path) and name in RECIPES):
        return name_or_path
    directory = cache_dir(name, RECIPES[name])
    weights = directory / "model.safetensors"
    # Read per call, not cached: a rebuilt cache entry keeps its path but not necessarily its weights.
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12] if weights.is_file() else None
    return f"{directory.name}@{digest}" if digest else directory.name


def cache_dir(name: str, recipe: BaseModelRecipe, root: Path | None = None) -> Path:
    """Return the cache directory of an embedded model: one per recipe and build code version."""
    return (root or cache_root()) / "base_models" / f"{name}-{recipe.fingerprint()}"


def ensure_built(name: str, recipe: BaseModelRecipe, root: Path | None = None) -> Path:
    """Return the cached directory of an embedded model, building it once (safe across processes)."""
    root = root or cache_root()
    target = cache_dir(name, recipe, root)
    if (target / "recipe.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{name}.lock"):
        if (target / "recipe.json").is_file():  # another process built it while we waited
            return target
        log.warning("Building embedded base model %r into %s (once; cached afterwards)", name, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            build_in_pinned_process(recipe, staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(target)  # atomic: readers never see a half-built model
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def build_in_pinned_process(recipe: BaseModelRecipe, out_dir: Path) -> None:
    """Run build_base_model in a child process under PINNED_NUMERICS (they are read when torch starts)."""
    recipe_json = json.dumps(dataclasses.asdict(recipe))
    command = [sys.executable, "-m", "lit_tuning.train.base_model", recipe_json, str(out_dir), str(os.getpid())]
    child = subprocess.run(command, env={**os.environ, **PINNED_NUMERICS}, check=False)
    if child.returncode != 0:
        raise RuntimeError(f"building the embedded base model failed (exit {child.returncode}); its error is above")


def spelling_line(word: str, order: list[int] | None = None) -> str:
    """Return the pretraining text that spells a word with indexed letters: ' apple: 1 a 2 p 3 p 4 l 5 e'.

    With `order` (1-based positions) the pairs come in that order: ' apple: 3 p 1 a 5 e 2 p 4 l'.
    """
    positions = order or range(1, len(word) + 1)
    return f" {word}: " + " ".join(f"{index} {word[index - 1]}" for index in positions)


def spelling_corpus(words: tuple[str, ...], letter_orders: int, rng: random.Random) -> list[str]:
    """Every word spelled in order, plus `letter_orders` spellings in shuffled position order."""
    lines = []
    for word in words:
        lines.append(spelling_line(word))
        for _ in range(letter_orders):
            # Shuffled orders make "letter k of this word" a direct lookup, not the end of a recital.
            lines.append(spelling_line(word, rng.sample(range(1, len(word) + 1), len(word))))
    return lines


def train_tokenizer(words: tuple[str, ...], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer in which frequent words are single tokens and every ' <letter>' is one."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def corpus() -> Iterator[str]:
        # Repeat words by frequency so that, as in real LLM vocabularies, common words merge into one token.
        for word in words:
            for _ in range(max(1, round(2 ** (zipf_frequency(word) - 3)))):
                yield f" {word}"
        for _ in range(50):  # letters and position numbers, each with its leading space
            yield " " + " ".join(ALPHABET)
            yield " " + " ".join(str(i) for i in range(1, 21))
        yield "What is letter 1 of the word? Answer:"

    tokenizer.train_from_iterator(corpus(), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
    split_letters = [c for c in ALPHABET if len(wrapped.encode(" " + c, add_special_tokens=False)) != 1]
    if split_letters:
        raise RuntimeError(f"tokenizer splits the letters {split_letters}; raise vocab_size")
    return wrapped


def letter_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Map each letter to the id of its answer token ' <letter>', which must be a single token."""
    ids: dict[str, int] = {}
    for letter in ALPHABET:
        pieces = tokenizer.encode(" " + letter, add_special_tokens=False)
        if len(pieces) != 1:
            raise ValueError(f"tokenizer splits the answer ' {letter}' into {len(pieces)} tokens; it must be one")
        ids[letter] = pieces[0]
    return ids


def embedded_config(name_or_path: str) -> LlamaConfig | None:
    """The architecture of an embedded model from its recipe, without building it; None for an unknown name."""
    recipe = RECIPES.get(name_or_path.removeprefix(EMBEDDED_PREFIX))
    return model_config(recipe) if recipe is not None else None


def model_config(recipe: BaseModelRecipe, **token_ids: int) -> LlamaConfig:
    """The Llama architecture of a recipe; its module names are known before (and without) a build."""
    return LlamaConfig(
        vocab_size=token_ids.pop("vocab_size", recipe.vocab_size),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        **token_ids,
    )


def build_base_model(recipe: BaseModelRecipe, out_dir: Path) -> None:
    """Train the tokenizer, pretrain a tiny Llama on the spelling corpus and save both with save_pretrained."""
    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    words = load_words(recipe.num_words, recipe.min_word_length, recipe.max_word_length)
    tokenizer = train_tokenizer(words, recipe.vocab_size)
    model = LlamaForCausalLM(
        model_config(
            recipe,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    corpus = spelling_corpus(words, recipe.letter_orders, rng)
    lines = [tokenizer.encode(line, add_special_tokens=False) for line in corpus]
    final_loss = _pretrain(model, lines, recipe, tokenizer.pad_token_id, rng)
    letter_ids = set(letter_token_ids(tokenizer).values())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    summary = {
        "recipe": dataclasses.asdict(recipe),
        "fingerprint": recipe.fingerprint(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "single_token_words": sum(len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1 for w in words),
        "final_pretrain_loss": round(final_loss, 4),
        # spelling_corpus puts each word's in-order line first, then its shuffled ones: score the in-order lines.
        "spelling_accuracy": round(_spelling_accuracy(model, lines[:: recipe.letter_orders + 1], letter_ids), 4),
        "lookup_accuracy": round(_lookup_accuracy(model, tokenizer, words), 4),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    # Written last: its presence marks a complete build.
    (out_dir / "recipe.json").write_text(json.dumps(summary, indent=2) + "\n")


def _pretrain(
    model: LlamaForCausalLM, lines: list[list[int]], recipe: BaseModelRecipe, pad_id: int, rng: random.Random
) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    # Decays to 5 % of the peak rather than 0: the last steps still teach the rarest words.
    schedule = lr_multiplier("cosine", max(1, recipe.pretrain_steps // 20), recipe.pretrain_steps, floor=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    loss_value = float("nan")
    for _ in range(recipe.pretrain_steps):
        batch = rng.sample(lines, min(recipe.batch_size, len(lines)))
        input_ids, attention_mask = pad_right(batch, pad_id)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
    model.eval()
    return loss_value


@torch.no_grad()
def _spelling_accuracy(model: LlamaForCausalLM, lines: list[list[int]], letter_ids: set[int]) -> float:
    """Fraction of letter tokens in the spelling corpus the model predicts exactly (teacher-forced)."""
    correct = total = 0
    for ids in lines:
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        predicted = logits[:-1].argmax(-1).tolist()
        for position, target in enumerate(ids[1:]):
            if target in letter_ids:
                correct += predicted[position] == target
                total += 1
    return correct / max(1, total)


@torch.no_grad()
def _lookup_accuracy(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, words: tuple[str, ...]) -> float:
    """Fraction of (word, position) pairs whose letter the model names right after ' word: k' (no recital)."""
    pairs = [(word, position) for word in words for position in range(1, len(word) + 1)]
    id_of = letter_token_ids(tokenizer)
    allowed = torch.tensor(sorted(id_of.values()))  # the answer is the likeliest letter, as in the LoRA task
    correct = 0
    for start in range(0, len(pairs), 512):
        chunk = pairs[start : start + 512]
        prompts = [tokenizer.encode(f" {word}: {position}", add_special_tokens=False) for word, position in chunk]
        input_ids, attention_mask = pad_right(prompts, tokenizer.pad_token_id)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        last = attention_mask.sum(1) - 1
        answer = allowed[logits[torch.arange(len(chunk)), last][:, allowed].argmax(-1)]
        expected = torch.tensor([id_of[word[position - 1]] for word, position in chunk])
        correct += int((answer == expected).sum())
    return correct / max(1, len(pairs))


if __name__ == "__main__":  # the child process of build_in_pinned_process: recipe JSON, output directory, parent pid
    die_with_parent(int(sys.argv[3]))  # a killed sweep must not leave a build running on its own
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    build_base_model(BaseModelRecipe(**json.loads(sys.argv[1])), Path(sys.argv[2]))
