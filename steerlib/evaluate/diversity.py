"""Distinct-n: the diversity of a prompt's samples.

**distinct-n**: per prompt, the unique word n-grams of all its samples divided by their total
number of words, averaged over prompts (DExperts' ``distinctness``, Liu et al., 2021); the older
ratio of unique to all n-grams is kept as :func:`distinct_n_ngrams`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from steerlib.errors import ConfigError
from steerlib.evaluate.contract import require_columns

__all__ = ["distinct_n", "distinct_n_ngrams", "mean_distinct_n", "mean_distinct_n_ngrams"]


def _words(text: Any, lower: bool = False) -> list[str]:
    """Whitespace tokens of one text (none for a missing text)."""
    if not isinstance(text, str):
        return []
    return (text.lower() if lower else text).split()


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    """The word n-grams of one tokenized text."""
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _check_n(n: int, name: str) -> int:
    if int(n) != n or n < 1:
        raise ConfigError(f"{name} got n={n!r}; pass a positive integer such as 1, 2 or 3.")
    return int(n)


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n of one prompt's samples as in DExperts: unique n-grams over words.

    DExperts (Liu et al., 2021, ``distinctness``) divides the number of unique n-grams of a
    prompt's generations by the total number of words of those generations. Tokens are
    whitespace-separated and case is kept, as there; n-grams never cross two texts. Departures:
    runs of whitespace count as one separator (DExperts splits on single spaces, so a double
    space adds an empty "word"), and samples without any word give 0.0 instead of NaN, so
    empty output reads as no diversity. Missing texts (None, NaN) count as empty.

    Args:
        texts: The samples of one prompt.
        n: N-gram length (1 or more).

    Returns:
        A ratio in [0, 1]; 0.0 when the texts hold no word.

    Raises:
        ConfigError: If ``n`` is smaller than 1.
    """
    n = _check_n(n, "distinct_n")
    tokenized = [_words(text) for text in texts]
    n_words = sum(len(words) for words in tokenized)
    if not n_words:
        return 0.0
    return len({gram for words in tokenized for gram in _ngrams(words, n)}) / n_words


def distinct_n_ngrams(texts: Iterable[str], n: int) -> float:
    """Unique n-grams divided by all n-grams over ``texts`` (this project's former distinct-n).

    Tokens are whitespace-separated and lower-cased; n-grams never cross two texts. Missing
    texts (None, NaN) count as empty. Unlike :func:`distinct_n` the denominator is the number
    of n-grams, so a text of one word contributes nothing to distinct-2.

    Args:
        texts: The completions to pool.
        n: N-gram length (1 or more).

    Returns:
        A ratio in [0, 1]; 0.0 when the texts hold no n-gram at all.

    Raises:
        ConfigError: If ``n`` is smaller than 1.
    """
    n = _check_n(n, "distinct_n_ngrams")
    grams = [gram for text in texts for gram in _ngrams(_words(text, lower=True), n)]
    if not grams:
        return 0.0
    return len(set(grams)) / len(grams)


def _mean_over_prompts(df: pd.DataFrame, func: Callable[[list[str]], float]) -> float:
    require_columns(df, ["prompt_id", "completion"])
    groups = df["completion"].groupby(df["prompt_id"].to_numpy(), sort=True)
    return float(np.mean([func(group.tolist()) for _, group in groups]))


def mean_distinct_n(df: pd.DataFrame, n: int) -> float:
    """DExperts distinct-n (:func:`distinct_n`) of each prompt's samples, averaged over prompts.

    Args:
        df: Sweep rows with ``prompt_id`` and ``completion``.
        n: N-gram length (1 or more).

    Returns:
        The mean over prompts of :func:`distinct_n` of that prompt's completions.
    """
    return _mean_over_prompts(df, lambda texts: distinct_n(texts, n))


def mean_distinct_n_ngrams(df: pd.DataFrame, n: int) -> float:
    """:func:`distinct_n_ngrams` of each prompt's samples, averaged over prompts.

    Args:
        df: Sweep rows with ``prompt_id`` and ``completion``.
        n: N-gram length (1 or more).

    Returns:
        The mean over prompts of :func:`distinct_n_ngrams` of that prompt's completions.
    """
    return _mean_over_prompts(df, lambda texts: distinct_n_ngrams(texts, n))
