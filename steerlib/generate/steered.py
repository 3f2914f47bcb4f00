"""Whether a row of a completions or summary table is the steered model.

New tables carry a boolean ``steered`` column (False on the unsteered rows: the baseline and
any generation without a steering value). Tables of older runs lack it and marked the
unsteered rows with ``layer == -1`` and ``direction == "none"`` instead; :func:`is_unsteered`
reads the column and those marks together (row by row, so a table concatenated from old and
new parts reads right too). The ``layer`` column keeps its
values: unsteered rows still say ``-1`` there.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["STEERED_COLUMN", "UNSTEERED_DIRECTION", "UNSTEERED_LAYER", "is_unsteered"]

STEERED_COLUMN = "steered"
"""Boolean column: True on the rows of a steered setting (a layer and direction), alpha 0
included; step 05 fills alpha 0 with the baseline's completions and marks them steered too."""

UNSTEERED_LAYER = -1
"""The ``layer`` value of unsteered rows (kept for old runs and readers of the column)."""

UNSTEERED_DIRECTION = "none"
"""The ``direction`` label of unsteered rows."""


def is_unsteered(rows: pd.DataFrame) -> pd.Series:
    """Whether each row is the unsteered model.

    A row is unsteered when its ``steered`` value is False, or (the marks every table has
    carried, old runs included) its ``direction`` is ``"none"`` or its ``layer`` is -1. A
    table without ``steered`` (an old run) or with missing values there reads the same as before
    the column existed.

    Args:
        rows: A completions or summary table (needs ``steered``, or ``direction``/``layer``).

    Returns:
        A boolean Series aligned with ``rows``.

    Example:
        >>> old = pd.DataFrame({"layer": [-1, 3], "direction": ["none", "caa"]})
        >>> is_unsteered(old).tolist()
        [True, False]
        >>> is_unsteered(old.assign(steered=[False, True])).tolist()
        [True, False]
    """
    out = pd.Series(False, index=rows.index)
    if "direction" in rows.columns:
        out |= rows["direction"] == UNSTEERED_DIRECTION
    if "layer" in rows.columns:
        out |= rows["layer"] == UNSTEERED_LAYER
    if STEERED_COLUMN in rows.columns:
        flag = rows[STEERED_COLUMN]
        out |= flag.notna() & ~flag.fillna(True).astype(bool)
    return out.astype(bool)
