"""Whether one text has collapsed into repeats: low distinct-2, or one n-gram many times in a row.

Heavy steering can make a model repeat itself, and a toxicity scorer rates such degenerate
output as clean; :func:`repetition` flags it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from steerlib.errors import ConfigError
from steerlib.evaluate.metrics import distinct_n_ngrams

__all__ = ["Repetition", "repetition"]


@dataclass(frozen=True)
class Repetition:
    """How repetitive one text is (see :func:`repetition`).

    Attributes:
        distinct_2: Unique word bigrams over all bigrams (lower-cased, as
            :func:`~steerlib.evaluate.metrics.distinct_n_ngrams`); NaN for a text of fewer than two
            words.
        run: The most back-to-back copies of one word n-gram (1 when nothing repeats).
        gram: That n-gram ("" when nothing repeats).
        reasons: Why the text is flagged, one phrase each (empty: not flagged).
    """

    distinct_2: float
    run: int
    gram: str
    reasons: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        """The text looks degenerate: empty, few distinct bigrams, or a run of repeats."""
        return bool(self.reasons)

    def describe(self) -> str:
        """One phrase for a person: why the text is flagged, or that it is not."""
        return "repetitive: " + ", ".join(self.reasons) if self.reasons else "no repetition"


def repetition(
    text: str, *, min_distinct_2: float = 0.7, max_run: int = 3, max_n: int = 4
) -> Repetition:
    """Flag a text that has collapsed into repeats, as heavy steering makes it do.

    A text is flagged when it holds no word, when fewer than ``min_distinct_2`` of its word
    bigrams are unique, or when one word n-gram (n up to ``max_n``) appears ``max_run`` or
    more times back to back ("Winc Winc Winc"). Words are whitespace-separated, lower-cased.

    Args:
        text: One completion.
        min_distinct_2: Lowest unique share of bigrams of a text that is not flagged.
        max_run: Back-to-back copies of one n-gram that flag the text (2 or more).
        max_n: Longest n-gram looked at for runs (1 or more).

    Returns:
        A :class:`Repetition`.

    Raises:
        ConfigError: ``max_run`` below 2 or ``max_n`` below 1.

    Example:
        >>> repetition("central central Winc Winc Winc").describe()
        "repetitive: 'winc' ×3 in a row"
        >>> repetition("the park was quiet this morning").flagged
        False
    """
    if max_run < 2 or max_n < 1:
        raise ConfigError(
            f"max_run must be at least 2 and max_n at least 1, got {max_run} and {max_n}."
        )
    words = text.lower().split() if isinstance(text, str) else []
    distinct = distinct_n_ngrams([" ".join(words)], 2) if len(words) > 1 else math.nan
    run, gram = 1, ""
    for n in range(1, max_n + 1):
        for start in range(len(words) - n + 1):
            copies = 1
            head = words[start : start + n]
            while words[start + copies * n : start + (copies + 1) * n] == head:
                copies += 1
            if copies > run:
                run, gram = copies, " ".join(head)
    reasons = []
    if not words:
        reasons.append("empty text")
    if run >= max_run:
        reasons.append(f"{gram!r} \u00d7{run} in a row")
    if distinct < min_distinct_2:  # False for NaN
        reasons.append(f"distinct-2 {distinct:.2f} < {min_distinct_2:g}")
    return Repetition(distinct, run, gram, tuple(reasons))
