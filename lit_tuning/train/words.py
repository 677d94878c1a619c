"""The English word list the spelling task and the embedded base model are built from."""

from __future__ import annotations

import functools

import wordfreq

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


@functools.lru_cache(maxsize=16)
def load_words(num_words: int, min_length: int = 3, max_length: int = 8) -> tuple[str, ...]:
    """Return the `num_words` most frequent English words made of a-z only, in frequency order."""
    if min_length < 1 or max_length < min_length:
        raise ValueError(f"word lengths must satisfy 1 <= min_length <= max_length, got {min_length}..{max_length}")
    words: list[str] = []
    # The wordfreq list is ranked by frequency; scan until enough words pass the filter.
    for word in wordfreq.iter_wordlist("en"):
        if min_length <= len(word) <= max_length and all(c in ALPHABET for c in word):
            words.append(word)
            if len(words) == num_words:
                return tuple(words)
    raise ValueError(
        f"wordfreq has only {len(words)} a-z words of length {min_length}-{max_length}, asked for {num_words}"
    )


def zipf_frequency(word: str) -> float:
    """Return the word's Zipf frequency (log10 of occurrences per billion words)."""
    return wordfreq.zipf_frequency(word, "en")
