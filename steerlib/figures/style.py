"""What every figure shares: colours, dashes, axis labels, titles and fitted axis ranges.

Titles say which layer(s), direction(s) and subset(s) a figure shows (:func:`scope_text`) and
the sign of alpha (:data:`ALPHA_NOTE`); y axes are fitted to the data (:func:`fitted_range`)
and switch to a log scale where positive values span a factor of 10 or more
(:func:`spans_decades`: broken text drives perplexity into the millions).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from steerlib.errors import DataError
from steerlib.figures.files import FIGURE_SIZES
from steerlib.figures.labels import text_width

__all__ = [
    "ALPHA_NOTE",
    "BLUE",
    "BOUNDED",
    "DIRECTION_DASH",
    "FALLBACK_COLORS",
    "GREY",
    "RED",
    "SUBSET_COLORS",
    "alpha_colors",
    "direction_text",
    "finite",
    "fit_y",
    "fitted_range",
    "label",
    "layers_text",
    "require_columns",
    "rgba",
    "scope_text",
    "spans_decades",
    "subset_color",
    "title",
    "title_margin",
    "titled",
    "wrap",
]


SUBSET_COLORS: dict[str, str] = {"challenging": "#d62728", "benign": "#1f77b4"}
"""Line colour of each prompt subset."""

DIRECTION_DASH: dict[str, str] = {"caa": "solid", "random": "dot", "none": "dash"}
"""Line dash of each steering direction (CAA solid, random control dotted)."""

BLUE, RED, GREY = "#4c72b0", "#d62728", "#8c8c8c"
ALPHA_NOTE = "positive alpha = steer away from toxicity"
BOUNDED = {
    "mean_toxicity",
    "expected_max_toxicity",
    "toxicity_probability",
    "distinct_1",
    "distinct_2",
    "distinct_3",
}
_LABELS = {
    "mean_toxicity": "Mean toxicity",
    "expected_max_toxicity": "Expected maximum toxicity",
    "toxicity_probability": "Toxicity probability",
    "perplexity": "Perplexity",
    "benign_perplexity": "Perplexity on benign prompts",
    "human_perplexity": "Steered perplexity on held-out benign text",
    "benign_human_perplexity": "Steered perplexity on held-out benign text",
    "floor_share": "Share of samples at the scorer's floor",
    "kl_benign": "KL on benign prompts",
    "distinct_1": "Distinct-1",
    "distinct_2": "Distinct-2",
    "distinct_3": "Distinct-3",
}
PAGE_WIDTH = FIGURE_SIZES["page"][0]
"""Width of a page figure in pixels: titles are wrapped to fit it."""
TITLE_SIZE = 12 * 1.4
"""Font size of a title (plotly: 1.4 times the 12-pixel layout font)."""
SUBTITLE_SIZE = TITLE_SIZE * 0.7
"""Font size of a ``<sup>`` subtitle line (plotly draws it at 70%)."""
TITLE_X, TITLE_PAD = 0.05, 20
"""Where the title starts (share of the width, plotly_white's default) and the room kept at
its right end, in pixels."""
FALLBACK_COLORS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def label(metric: str) -> str:
    """Human-readable name of a summary column."""
    return _LABELS.get(metric, metric.replace("_", " "))


def wrap(text: str, size: float, width: float) -> list[str]:
    """``text`` broken into lines of at most ``width`` pixels at font ``size``.

    Lines break after a `` · `` or ``;`` separator where they can, else at a space; a single
    word longer than a line keeps a line of its own.
    """
    chunks = re.findall(r".+?(?: · |; |$)", text) if text else []
    words = [
        piece
        for chunk in chunks
        for piece in ([chunk] if text_width(chunk, size) <= width else chunk.split(" "))
    ]
    lines: list[str] = []
    for word in words:
        joined = f"{lines[-1]}{'' if lines[-1].endswith(' ') else ' '}{word}" if lines else word
        if lines and text_width(joined.rstrip(), size) <= width:
            lines[-1] = joined
        else:
            lines.append(word)
    return [line.strip() for line in lines if line.strip()]


def title(
    text: str, scope: str = "", *, note: str | None = ALPHA_NOTE, width: int = PAGE_WIDTH
) -> dict[str, Any]:
    """Figure title with what it shows (``scope``) and alpha's sign in a smaller subtitle.

    Both are wrapped to fit a figure ``width`` pixels wide (the title starts at 5% of the
    width, plotly's default), so no title is cut at the right edge; give the figure a top
    margin of :func:`title_margin` so its lines stay above the plot.

    Args:
        text: The title.
        scope: What the figure shows (layers, directions, subsets, half).
        note: A last subtitle sentence (alpha's sign by default; None: none).
        width: The narrowest figure width the title must fit, in pixels.

    Returns:
        Plotly's ``layout.title``: its ``text``, lines joined by ``<br>``.
    """
    room = width * (1 - TITLE_X) - TITLE_PAD
    sub = "; ".join(part for part in (scope, note) if part)
    lines = wrap(text, TITLE_SIZE, room)
    lines += [f"<sup>{line}</sup>" for line in wrap(sub, SUBTITLE_SIZE, room) if line]
    return {"text": "<br>".join(lines)}


def titled(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``layout`` keys of a :func:`title` (same arguments) and the top margin it needs."""
    heading = title(*args, **kwargs)
    return {"title": heading, "margin": {"t": title_margin(heading)}}


def title_margin(fig_title: dict[str, Any]) -> float:
    """The top margin in pixels that keeps every line of a :func:`title` above the plot.

    Plotly sets a title's first line at half the top margin and the next ones 1.3 title
    font sizes apart below it (subtitle lines too), so the margin must be twice the drop
    from the first line's baseline to the last one's descent.
    """
    lines = str(fig_title["text"]).count("<br>") + 1
    return max(100.0, 2 * ((lines - 1) * 1.3 * TITLE_SIZE + TITLE_PAD / 2 + 4))


def layers_text(layers: Sequence[Any]) -> str:
    """``layer 12`` or ``layers 3, 6, 9`` (``layers 0-29`` for a long run of layers)."""
    values = sorted({int(v) for v in layers if int(v) >= 0})
    if not values:
        return "unsteered"
    if len(values) == 1:
        return f"layer {values[0]}"
    if len(values) > 6 and values == list(range(values[0], values[-1] + 1)):
        return f"layers {values[0]}-{values[-1]}"
    return "layers " + ", ".join(str(v) for v in values)


def direction_text(directions: Sequence[Any]) -> str:
    """Direction names as shown in titles: ``CAA`` and ``random control``."""
    names = {"caa": "CAA", "random": "random control", "none": "unsteered"}
    found = [str(d) for d in dict.fromkeys(directions) if str(d) != "none"]
    return " vs ".join(names.get(d, d) for d in found) or "unsteered"


def scope_text(
    rows: pd.DataFrame, *, layers: bool = True, direction: bool = True, subset: bool = True
) -> str:
    """What ``rows`` hold, for a subtitle: layers, directions and subsets present."""
    parts = []
    if layers and "layer" in rows.columns:
        parts.append(layers_text(rows["layer"].tolist()))
    if direction and "direction" in rows.columns:
        parts.append(direction_text(rows["direction"].tolist()))
    if subset and "subset" in rows.columns:
        subsets = [str(v) for v in dict.fromkeys(rows["subset"])]
        parts.append(("subset " if len(subsets) == 1 else "subsets ") + ", ".join(subsets))
    halves = [str(v) for v in dict.fromkeys(rows["split"])] if "split" in rows.columns else []
    if len(halves) == 1 and halves[0] != "all":
        parts.append(f"{halves[0]} half")
    return " · ".join(parts)


def finite(values: Any) -> np.ndarray:
    """The finite entries of ``values`` as floats."""
    array = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(float)
    return array[np.isfinite(array)]


def spans_decades(values: Any) -> bool:
    """Whether the finite ``values`` are all positive and span a factor of 10 or more."""
    array = finite(values)
    return bool(len(array)) and bool((array > 0).all()) and array.max() >= 10 * array.min()


def fitted_range(
    values: Any, *, bounded: bool = False, log: bool = False, pad: float = 0.08
) -> list[float] | None:
    """An axis range around the finite ``values`` with a margin of ``pad`` times their span.

    Args:
        values: The numbers to show (lines, bands, markers).
        bounded: The quantity lies in [0, 1]; the range is clipped to it.
        log: A log axis: the range is in log10 units, as plotly expects.
        pad: Margin on each side, as a share of the span.

    Returns:
        ``[low, high]``, or None when there is no finite value (plotly then autoscales).
    """
    array = finite(values)
    if log:
        array = np.log10(array[array > 0])
    if not len(array):
        return None
    low, high = float(array.min()), float(array.max())
    span = high - low or (abs(high) * 0.1 if high else 0.1)
    low, high = low - pad * span, high + pad * span
    if bounded and not log:
        low, high = max(low, 0.0), min(high, 1.0)
    return [low, high]


def fit_y(fig: go.Figure, values: Any, metric: str, **where: Any) -> None:
    """Fit a y axis to ``values``: clipped to [0, 1] if bounded, else log if they span decades."""
    log = metric not in BOUNDED and spans_decades(values)
    if log:
        fig.update_yaxes(type="log", **where)
    fig.update_yaxes(range=fitted_range(values, bounded=metric in BOUNDED, log=log), **where)


def alpha_colors(alphas: Sequence[float]) -> dict[float, str]:
    """One discrete colour per alpha, ordered along a sequential scale (Viridis, no yellow)."""
    ordered = sorted({float(a) for a in alphas})
    if len(ordered) == 1:
        return {ordered[0]: sample_colorscale("Viridis", [0.35])[0]}
    positions = np.linspace(0.0, 0.85, len(ordered)).tolist()
    return dict(zip(ordered, sample_colorscale("Viridis", positions), strict=True))


def subset_color(subset: str, index: int = 0) -> str:
    """Colour of a subset (a fallback palette for unknown subsets)."""
    return SUBSET_COLORS.get(subset, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


def rgba(hex_color: str, opacity: float) -> str:
    """Turn ``#rrggbb`` into an ``rgba(...)`` string."""
    red, green, blue = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{opacity})"


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise DataError when ``df`` is empty or lacks a column."""
    missing = [column for column in columns if column not in df.columns]
    if missing:
        raise DataError(f"The {what} lacks the column(s) {missing}; pass a steerlib {what}.")
    if len(df) == 0:
        raise DataError(f"The {what} is empty; pass at least one row.")
