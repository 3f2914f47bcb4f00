"""The texts a scorer takes: a sequence of strings, checked once for every scorer."""

from __future__ import annotations

from collections.abc import Sequence

from steerlib.errors import ConfigError


def as_text_list(texts: Sequence[str]) -> list[str]:
    """Check that ``texts`` is a sequence of strings and return it as a list."""
    if isinstance(texts, str | bytes):
        raise ConfigError("texts must be a sequence of strings, not a single string; wrap it.")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise ConfigError(
                f"texts[{i}] is a {type(text).__name__}, not a string; score strings only."
            )
    return items
