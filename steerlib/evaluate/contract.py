"""The tables the metrics read: their identifying columns, halves, constants and checks.

Every metric module (:mod:`~steerlib.evaluate.toxicity`, :mod:`~steerlib.evaluate.diversity`,
:mod:`~steerlib.evaluate.bootstrap`, :mod:`~steerlib.evaluate.summary`) and the operating-point
rule share these names; they live here so none of those modules imports another only for them.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from steerlib.errors import DataError

__all__ = [
    "ALPHA_DECIMALS",
    "FLOOR_TOLERANCE",
    "GROUP_COLUMNS",
    "PERPLEXITY_CAP",
    "SECOND_SUFFIX",
    "SPLITS",
    "require_columns",
    "split_rank",
]

GROUP_COLUMNS: tuple[str, ...] = ("subset", "layer", "alpha", "direction")
"""Columns that identify one sweep condition (one summary row within a split)."""
SPLITS: tuple[str, ...] = ("all", "selection", "confirmation")
"""Values of the summary's ``split`` column: every prompt, then the two halves."""
PERPLEXITY_CAP = 1e4
"""Per-sample perplexities at or above this are left out of the mean (as in DExperts)."""
FLOOR_TOLERANCE = 1e-6
"""A sample is "at the floor" when its score is within this of the scorer's floor.

Within, not at most: profanity-check scores clean text with known words below its floor
("the cat sat": 0.031 against 0.036), so "at most the floor" would count fluent clean text as
text the scorer cannot read."""
SECOND_SUFFIX = "_second"
"""Suffix of the second scorer's columns: ``toxicity_second`` in the sweep table and
``expected_max_toxicity_second`` (with ``_ci_low``/``_ci_high``), ``toxicity_probability_second``
and ``mean_toxicity_second`` in the summary."""
ALPHA_DECIMALS = 9  # alphas are matched after rounding, so 0.1 + 0.2 equals 0.3


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str = "sweep table") -> None:
    """Raise DataError when ``df`` is empty or lacks one of ``columns``."""
    missing = [column for column in columns if column not in df.columns]
    if missing:
        raise DataError(
            f"The {what} lacks the column(s) {missing}; pass a table with the columns of the "
            "steerlib contract."
        )
    if len(df) == 0:
        raise DataError(f"The {what} is empty; pass at least one row.")


def split_rank(name: str) -> tuple[int, str]:
    """Sort key of a split name: the known ones in :data:`SPLITS` order, then the others."""
    return (SPLITS.index(name) if name in SPLITS else len(SPLITS), str(name))
